//! Self-tests of `tests::fixtures`: the cache builds once under concurrency and never shows half
//! a fixture, and the busybox and debootstrap root file systems hold what they promise.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use tests::fixtures::{busybox_rootfs_tar, cached_fixture_in, debootstrap_rootfs_tar};
use tests::gnutar::{extract_with_gnu_tar, list_with_gnu_tar};
use tests::manifest::{Kind, Manifest};

#[test]
fn concurrent_requests_build_a_fixture_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let builds = AtomicUsize::new(0);
    let paths = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    cached_fixture_in(dir.path(), "slow.tar", |build| {
                        builds.fetch_add(1, Ordering::SeqCst);
                        fs::write(build.scratch.join("work"), "intermediate")?;
                        // Long enough that the other threads arrive while this one builds.
                        std::thread::sleep(Duration::from_millis(300));
                        fs::write(build.out, "done")?;
                        Ok(())
                    })
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("worker panicked"))
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    assert_eq!(builds.load(Ordering::SeqCst), 1);
    assert!(paths.iter().all(|p| p == &dir.path().join("slow.tar")));
    assert_eq!(fs::read_to_string(&paths[0])?, "done");
    assert_eq!(names_in(dir.path())?, ["slow.tar", "slow.tar.lock"]);
    Ok(())
}

#[test]
fn failed_builds_leave_no_fixture_and_leftovers_are_removed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // What a build killed half-way leaves behind: a partial output and a scratch directory.
    fs::write(dir.path().join(".f.tar.tmp-999999"), "partial")?;
    fs::create_dir(dir.path().join(".f.tar.tmp-999999.scratch"))?;
    fs::write(dir.path().join(".f.tar.tmp-999999.scratch/x"), "partial")?;

    let err = cached_fixture_in(dir.path(), "f.tar", |build| {
        fs::write(build.out, "half")?;
        anyhow::bail!("recipe broke")
    })
    .expect_err("the build fails");
    assert!(format!("{err:#}").contains("recipe broke"), "{err:#}");
    // Neither the partial output nor the scratch directory survives a failed build.
    assert_eq!(names_in(dir.path())?, ["f.tar.lock"]);

    let path = cached_fixture_in(dir.path(), "f.tar", |build| Ok(fs::write(build.out, "ok")?))?;
    assert_eq!(fs::read_to_string(path)?, "ok");
    assert_eq!(names_in(dir.path())?, ["f.tar", "f.tar.lock"]);
    Ok(())
}

#[test]
fn helpers_started_by_a_build_keep_the_fixture_locked() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut helper = None;
    cached_fixture_in(dir.path(), "held.tar", |build| {
        helper = Some(build.command("sleep").arg("30").spawn()?);
        Ok(fs::write(build.out, "x")?)
    })?;
    let mut helper = helper.context("the recipe ran")?;
    // The builder's own descriptor is closed by now; only the helper's inherited copy remains.
    let lock = fs::File::open(dir.path().join("held.tar.lock"))?;
    let held = lock.try_lock();
    helper.kill()?;
    helper.wait()?;
    assert!(
        matches!(held, Err(fs::TryLockError::WouldBlock)),
        "the helper should hold the lock: {held:?}"
    );
    lock.try_lock()
        .context("the lock is free once the helper is gone")?;
    Ok(())
}

fn names_in(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

#[test]
fn busybox_rootfs_has_a_shell_users_and_a_sticky_tmp() -> anyhow::Result<()> {
    let tar = busybox_rootfs_tar()?;
    let root = tempfile::tempdir()?;
    extract_with_gnu_tar(&tar, root.path())?;
    let manifest = Manifest::of_dir(root.path())?;
    let get = |path: &str| {
        manifest
            .get(path)
            .with_context(|| format!("{path} is missing"))
    };
    assert_eq!(get("bin/busybox")?.kind, Kind::File);
    assert_eq!(get("bin/busybox")?.mode, 0o755);
    assert_eq!(
        get("bin/sh")?.symlink_target.as_deref(),
        Some(Path::new("busybox"))
    );
    assert_eq!(get("tmp")?.mode, 0o1777);
    assert_eq!(get("root")?.mode, 0o700);
    assert_eq!((get("home/user")?.uid, get("home/user")?.gid), (1000, 1000));
    for dir in ["etc", "var", "usr/bin"] {
        assert_eq!(get(dir)?.kind, Kind::Dir, "{dir}");
    }
    let passwd = fs::read_to_string(root.path().join("etc/passwd"))?;
    assert!(passwd.contains("user:x:1000:1000:"), "{passwd}");
    assert!(passwd.contains("nobody:x:65534:65534:"), "{passwd}");

    // The real proof that it is a root file system: a shell runs in it and sees its users.
    let output = Command::new("chroot")
        .arg(root.path())
        .args(["/bin/sh", "-c", "id -u user && ls -d /tmp"])
        .output()
        .context("failed to run chroot")?;
    ensure!(
        output.status.success(),
        "chroot failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "1000\n/tmp\n");
    Ok(())
}

#[test]
fn busybox_rootfs_is_cached_and_reproducible() -> anyhow::Result<()> {
    let first = busybox_rootfs_tar()?;
    let listing = list_with_gnu_tar(&first)?;
    assert!(listing.iter().any(|l| l.ends_with(" bin/sh -> busybox")));
    assert!(listing.len() > 200, "{} entries", listing.len());
    assert_eq!(busybox_rootfs_tar()?, first);
    Ok(())
}

/// Builds the debootstrap fixture if it is missing (half a minute to a few minutes, with network
/// access to a Debian mirror) and checks it is a Debian system; later runs reuse the cached tar.
#[test]
fn debootstrap_rootfs_is_a_debian_bookworm_minbase() -> anyhow::Result<()> {
    let started = Instant::now();
    let tar = debootstrap_rootfs_tar()?;
    let listing = list_with_gnu_tar(&tar)?;
    eprintln!(
        "{}: {} entries, {} bytes, ready in {:.1}s",
        tar.display(),
        listing.len(),
        fs::metadata(&tar)?.len(),
        started.elapsed().as_secs_f64()
    );
    for member in [
        " ./etc/debian_version",
        " ./usr/bin/dpkg",
        " ./usr/bin/bash",
        " ./usr/bin/apt",
    ] {
        assert!(
            listing.iter().any(|l| l.ends_with(member)),
            "{member} missing"
        );
    }
    assert!(
        listing.iter().any(|l| l.ends_with(" ./bin -> usr/bin")),
        "merged /usr"
    );
    assert!(listing.len() > 3000, "{} entries", listing.len());
    Ok(())
}

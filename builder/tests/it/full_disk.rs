//! A full disk (issue 19), on a small tmpfs of the test's own, for both backends: every writer
//! (`imgfs import`, a writer in a mount, `img build`'s RUN, `img pull`, `img unpack`) gets ENOSPC
//! as a clear error and leaves nothing half-written, mounts stay up, and on the full disk
//! `imgfs rm`, `imgfs fsck --repair`, `img rm` and `img prune` still work and free space, while
//! what was committed before stays intact.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tests::LayerBuilder;
use tests::registry::TestRegistry;

use crate::BACKENDS;

/// A tmpfs of `mb` MiB mounted on a fresh directory under /var/tmp; unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mb: u64) -> SmallDisk {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
                .arg(dir.path()),
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn free(&self) -> u64 {
        let st = nix::sys::statvfs::statvfs(self.path()).unwrap();
        st.blocks_available() as u64 * st.fragment_size() as u64
    }

    /// Fills the disk to the last byte with a file beside what the test keeps there, as another
    /// program would; returns the file.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let block = vec![0x5a; 64 << 10];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        // The last partial block, byte by byte at most 64 KiB.
        while f.write(&[0x5a]).is_ok_and(|n| n == 1) {}
        assert!(self.free() < 4096, "{} is not full", self.path().display());
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed:\n{}", text(&out));
    text(&out)
}

/// A command that must fail with exit code 1 (an error, not rocksdb's abort, 134) and say that
/// the disk is full and while doing what.
fn fails_for_space(cmd: &mut Command) -> String {
    let out = run(cmd);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{cmd:?}:\n{said}");
    assert!(
        said.contains("no space left on device while "),
        "{cmd:?} did not say the disk is full:\n{said}"
    );
    said
}

fn random(len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    buf
}

pub(crate) fn imgfs() -> Command {
    // `cargo test --workspace` builds every binary; `cargo test -p builder` alone does not.
    let bin = Path::new(env!("CARGO_BIN_EXE_img")).with_file_name("imgfs");
    assert!(
        bin.is_file(),
        "no imgfs at {bin:?}: run `cargo build -p imgfs` first"
    );
    Command::new(bin)
}

fn img(state: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_img"));
    cmd.arg("-s").arg(state);
    cmd
}

/// Writes `len` random bytes to `path` and returns how the write ended.
fn write_file(path: &Path, len: usize) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    for _ in 0..len / (1 << 20) {
        f.write_all(&random(1 << 20))?;
    }
    f.sync_all()
}

fn assert_enospc(r: std::io::Result<()>, what: &str) {
    let e = r.expect_err(what);
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{what}: {e}");
}

/// `imgfs fsck` of `store` must find nothing wrong.
fn fsck_clean(store: &Path) {
    let said = run_ok(imgfs().arg("fsck").arg(store));
    assert!(said.contains(" 0 problems"), "{said}");
}

#[test]
fn imgfs_import_and_a_mount_writer_get_enospc_and_rm_and_fsck_work_on_the_full_disk() {
    if !tests::can_run(true, &[]) {
        return;
    }
    let disk = SmallDisk::mount(48);
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let store = disk.path().join("store");
    run_ok(imgfs().arg("init").arg(&store));
    let base = work.path().join("base.tar");
    LayerBuilder::new()
        .file("hello", 0o644, "hello\n")
        .write_to(std::fs::File::create(&base).unwrap())
        .unwrap();
    run_ok(
        imgfs()
            .args(["import", "--name", "base", "--store"])
            .arg(&store)
            .arg(&base),
    );
    let exported = work.path().join("exported.tar");
    let export = |name: &str| {
        run_ok(
            imgfs()
                .args(["export", "--full", "--store"])
                .arg(&store)
                .arg("--output")
                .arg(&exported)
                .arg(name),
        );
        std::fs::read(&exported).unwrap()
    };
    let before = export("base");

    // An import larger than the disk, of big files and of many small ones.
    let big = work.path().join("big.tar");
    LayerBuilder::new()
        .file("big", 0o644, random(60 << 20))
        .write_to(std::fs::File::create(&big).unwrap())
        .unwrap();
    fails_for_space(
        imgfs()
            .args(["import", "--name", "big", "--parent", "base", "--store"])
            .arg(&store)
            .arg(&big),
    );
    let mut many = LayerBuilder::new();
    for i in 0..6000 {
        many = many.file(format!("f{i}"), 0o644, random(12 << 10));
    }
    let many_tar = work.path().join("many.tar");
    many.write_to(std::fs::File::create(&many_tar).unwrap())
        .unwrap();
    fails_for_space(
        imgfs()
            .args(["import", "--name", "many", "--parent", "base", "--store"])
            .arg(&store)
            .arg(&many_tar),
    );
    let listed = run_ok(imgfs().args(["list", "--store"]).arg(&store));
    assert!(
        !listed.contains("big") && !listed.contains("many"),
        "{listed}"
    );
    fsck_clean(&store);

    // A writer in a mount gets ENOSPC; the mount stays up, and deleting makes room again.
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    run_ok(
        imgfs()
            .args([
                "mount",
                "--writable",
                "--key",
                "w",
                "--daemon",
                "--snapshot",
                "base",
            ])
            .arg("--store")
            .arg(&store)
            .arg(&mnt),
    );
    assert_enospc(
        write_file(&mnt.join("big"), 60 << 20),
        "a write past the disk",
    );
    assert_eq!(std::fs::read(mnt.join("hello")).unwrap(), b"hello\n");
    std::fs::remove_file(mnt.join("big")).unwrap();
    // The kernel sends the failed writer's RELEASE asynchronously, and imgfs frees the
    // unlinked file's data only once it is closed: wait for the space (or time out).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while disk.free() < 8 << 20 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    write_file(&mnt.join("after"), 4 << 20).expect("a write after deleting");
    run_ok(imgfs().arg("umount").arg(&mnt));

    // Something else fills the disk: removing and repairing still work, and free space.
    let filler = disk.fill();
    run_ok(imgfs().args(["fsck", "--repair"]).arg(&store));
    let full = disk.free();
    run_ok(imgfs().args(["rm", "--store"]).arg(&store).arg("w"));
    // Most of the 4 MiB written through the mount (rm's own records take a little).
    assert!(
        disk.free() >= full + (3 << 20),
        "rm freed {} bytes",
        disk.free() - full
    );
    fsck_clean(&store);
    fails_for_space(
        imgfs()
            .args(["import", "--name", "late", "--parent", "base", "--store"])
            .arg(&store)
            .arg(&big),
    );
    std::fs::remove_file(filler).unwrap();
    fsck_clean(&store);
    assert_eq!(export("base"), before, "the committed snapshot changed");
    // With room again, the store takes writes as before.
    run_ok(
        imgfs()
            .args(["import", "--name", "again", "--parent", "base", "--store"])
            .arg(&store)
            .arg(&base),
    );
}

/// An image of one 40 MB random file, pushed to `registry`; returns its reference.
fn push_big_image(registry: &TestRegistry, work: &Path) -> String {
    let state = work.join("pusher");
    let tar = work.join("rootfs.tar");
    LayerBuilder::new()
        .file("big", 0o644, random(40 << 20))
        .write_to(std::fs::File::create(&tar).unwrap())
        .unwrap();
    run_ok(img(&state).arg("import").arg(&tar).arg("big:1"));
    let target = format!("{}/test/big:1", registry.host());
    run_ok(img(&state).args(["push", "big:1", &target]));
    target
}

fn save(state: &Path, image: &str, to: &Path) -> Vec<u8> {
    run_ok(img(state).args(["save", "-o"]).arg(to).arg(image));
    std::fs::read(to).unwrap()
}

#[test]
fn img_build_pull_unpack_and_mounts_get_enospc_and_rm_prune_work_on_the_full_disk() {
    if !crate::can_run() || !tests::can_run(true, &["docker-registry"]) {
        return;
    }
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let registry = TestRegistry::start().unwrap();
    let big = push_big_image(&registry, work.path());
    let ctx = crate::context(
        "FROM busybox\nRUN dd if=/dev/urandom of=/big bs=1M count=120\n",
        // Larger than the store's reserve, which rm and prune may need on a full disk.
        &[(
            "Dockerfile.small",
            "FROM busybox\nRUN dd if=/dev/urandom of=/small bs=1M count=6\n",
        )],
    );
    for backend in BACKENDS {
        let disk = SmallDisk::mount(56);
        let state = disk.path().join("img");
        // What happens when the disk does fill (a RUN step, another program) is the point, so
        // the layer limit that refuses a layer the free space cannot hold is off.
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(state.join("config.json"), r#"{"min_free_space": 0}"#).unwrap();
        run_ok(
            img(&state)
                .args(["load", "-i"])
                .arg(&crate::base().docker_archive),
        );
        let saved = work.path().join(format!("busybox-{backend}.tar"));
        let before = save(&state, "busybox", &saved);
        let small = ["build", "--backend", backend, "-t", "small", "-f"];
        run_ok(
            img(&state)
                .args(small)
                .arg(ctx.path().join("Dockerfile.small"))
                .arg(ctx.path()),
        );

        // RUN fills the disk: the step fails with the command's own ENOSPC.
        let out = run(img(&state)
            .args(["build", "--backend", backend, "-t", "big"])
            .arg(ctx.path()));
        assert_eq!(out.status.code(), Some(1), "{backend}: {}", text(&out));
        assert!(
            text(&out).contains("No space left on device"),
            "{backend}: {}",
            text(&out)
        );

        // A writer in a mount gets ENOSPC, and the mount stays up.
        let mnt = work.path().join(format!("mnt-{backend}"));
        std::fs::create_dir(&mnt).unwrap();
        run_ok(
            img(&state)
                .args(["mount", "--writable", "--backend", backend, "busybox"])
                .arg(&mnt),
        );
        assert_enospc(write_file(&mnt.join("big"), 80 << 20), backend);
        assert!(mnt.join("bin/busybox").is_file(), "{backend}: mount gone");
        std::fs::remove_file(mnt.join("big")).unwrap();
        // The deleted file's space comes back once the kernel forgets its inode (a FORGET,
        // queued behind other requests on a busy machine), not at the unlink itself.
        let start = std::time::Instant::now();
        loop {
            match write_file(&mnt.join("after"), 1 << 20) {
                Err(e)
                    if e.raw_os_error() == Some(libc::ENOSPC) && start.elapsed().as_secs() < 20 =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(100))
                }
                r => break r.expect("a write after deleting"),
            }
        }
        run_ok(img(&state).arg("umount").arg(&mnt));

        // A pull larger than the disk.
        fails_for_space(img(&state).arg("pull").arg(&big));

        // Something else fills the disk.
        let filler = disk.fill();
        let unpacked = disk.path().join("unpacked");
        fails_for_space(img(&state).arg("unpack").arg("small").arg(&unpacked));
        assert!(
            !unpacked.exists(),
            "{backend}: a failed unpack left its directory"
        );
        let full = disk.free();
        run_ok(img(&state).args(["rm", "small"]));
        run_ok(img(&state).arg("prune"));
        assert!(disk.free() > full, "{backend}: rm and prune freed nothing");
        let store = state.join("imgfs");
        if store.exists() {
            fsck_clean(&store);
        }

        std::fs::remove_file(filler).unwrap();
        assert_eq!(
            save(&state, "busybox", &saved),
            before,
            "{backend}: busybox changed"
        );
        // Nothing of the failed steps is left for prune to find later.
        let du = run_ok(img(&state).arg("du"));
        assert!(du.contains("Reclaimable:\t0B"), "{backend}: {du}");
    }
}

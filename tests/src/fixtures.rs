//! Base root file systems for tests and benchmarks, built once per machine and cached as tars
//! under `/var/tmp/img-fixtures/` (or `$IMG_FIXTURES_DIR`).
//!
//! A fixture is built under a temporary name and renamed into place, so a reader sees either no
//! fixture or a complete one, even when the builder is killed half-way. Builders take an
//! exclusive `flock` on `<name>.lock` first, so two test processes (or two tests in one process)
//! never build the same fixture at once, and whoever holds the lock may delete leftovers of a
//! killed build. Fixture names carry a version: change the recipe, bump the version.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

use crate::gnutar;
use crate::layer::LayerBuilder;

/// The default cache directory. `/var/tmp` survives reboots (unlike `/tmp` on many systems) and
/// is outside any checkout, so `cargo clean` and fresh worktrees keep the slow fixtures.
pub const DEFAULT_FIXTURES_DIR: &str = "/var/tmp/img-fixtures";

/// Overrides `DEFAULT_FIXTURES_DIR`, e.g. for a CI cache directory.
pub const FIXTURES_DIR_VAR: &str = "IMG_FIXTURES_DIR";

/// Overrides the Debian mirror `debootstrap_rootfs_tar` downloads from (see `debian_mirror`).
pub const DEBIAN_MIRROR_VAR: &str = "IMG_DEBIAN_MIRROR";

/// Where Debian's busybox-static puts its binary (`/bin` is a symlink to `/usr/bin` on merged-usr
/// systems, so this is also `/usr/bin/busybox`).
const BUSYBOX: &str = "/bin/busybox";

const BUSYBOX_ROOTFS: &str = "busybox-rootfs-v1.tar";
const DEBOOTSTRAP_ROOTFS: &str = "debootstrap-bookworm-minbase-v1.tar";

/// The cache directory, created if missing.
pub fn fixtures_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::var_os(FIXTURES_DIR_VAR)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_FIXTURES_DIR));
    fs::create_dir_all(&dir).with_context(|| format!("failed to create {dir:?}"))?;
    Ok(dir)
}

/// A small root file system as an uncompressed tar, built from the host's busybox-static:
/// `bin/busybox` plus a `bin/<applet> -> busybox` symlink per applet, the directories `etc`,
/// `home`, `home/user` (1000:1000), `root` (0700), `tmp` (1777), `usr`, `usr/bin` and `var`, and
/// an `etc/passwd` and `etc/group` with root (0), user (1000) and nobody/nogroup (65534).
///
/// Every entry has mtime `layer::DEFAULT_MTIME`, so the tar's bytes depend only on the busybox
/// binary. Needs the `busybox-static` package.
pub fn busybox_rootfs_tar() -> anyhow::Result<PathBuf> {
    cached_fixture(BUSYBOX_ROOTFS, |build| build_busybox_rootfs(build.out))
}

/// A Debian bookworm `--variant=minbase` root file system made by debootstrap, archived by GNU
/// tar (`--numeric-owner --xattrs --sort=name -C rootfs .`, PAX format, member names start with
/// `./`). About 6,800 entries and 205 MB; building it takes half a minute to a few minutes,
/// depending on the mirror. Needs root, the `debootstrap` package and network access to a Debian
/// mirror (see `debian_mirror`).
pub fn debootstrap_rootfs_tar() -> anyhow::Result<PathBuf> {
    cached_fixture(DEBOOTSTRAP_ROOTFS, build_debootstrap_rootfs)
}

/// What a fixture recipe gets: where to write, where to work, and a way to run helpers that
/// keep the fixture locked for as long as they live.
#[derive(Debug)]
pub struct FixtureBuild<'a> {
    /// The file the recipe must write the fixture to.
    pub out: &'a Path,
    /// An empty directory for intermediate files, deleted after the build, failed or not.
    pub scratch: &'a Path,
    lock: &'a File,
}

impl FixtureBuild<'_> {
    /// A `Command` whose process, and every descendant that does not close it, inherits the
    /// fixture's lock. If the test process is killed during a long build (debootstrap), the lock
    /// stays held until the orphaned helpers finish, so the next builder cannot delete a scratch
    /// directory they are still writing into.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let fd = self.lock.as_raw_fd();
        let mut command = Command::new(program);
        let keep_lock_open = move || -> std::io::Result<()> {
            // SAFETY: fcntl on a descriptor number is a plain system call; it is
            // async-signal-safe, allocates nothing, and changes only the child's own table.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            // SAFETY: as above.
            if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        };
        // SAFETY: the hook runs between fork and exec and only calls fcntl (see above). Clearing
        // close-on-exec in the parent instead would leak the lock into every process any thread
        // of the test binary spawns.
        unsafe { command.pre_exec(keep_lock_open) };
        command
    }
}

/// Returns `<fixtures dir>/<name>`, first building it with `build` unless it exists.
///
/// `build` must write the fixture to `FixtureBuild::out`. That file and the scratch directory sit
/// in the fixtures directory under names starting with `.<name>.tmp-`, which marks them as
/// leftovers if the process dies.
pub fn cached_fixture(
    name: &str,
    build: impl FnOnce(&FixtureBuild<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<PathBuf> {
    cached_fixture_in(&fixtures_dir()?, name, build)
}

/// `cached_fixture` with the cache in `dir` (which must exist), for testing the cache itself.
pub fn cached_fixture_in(
    dir: &Path,
    name: &str,
    build: impl FnOnce(&FixtureBuild<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<PathBuf> {
    let ready = dir.join(name);
    // Fast path without the lock: a fixture only ever appears by rename, complete.
    if ready.exists() {
        return Ok(ready);
    }
    let lock_path = dir.join(format!("{name}.lock"));
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("failed to open {lock_path:?}"))?;
    // flock, not a lock directory or pid file: the kernel drops it when the holder dies, so a
    // killed build never leaves a lock that someone has to clean up by hand.
    lock.lock()
        .with_context(|| format!("failed to lock {lock_path:?}"))?;
    if ready.exists() {
        return Ok(ready);
    }
    let tmp_prefix = format!(".{name}.tmp-");
    remove_leftovers(dir, &tmp_prefix)?;
    let out = dir.join(format!("{tmp_prefix}{}", std::process::id()));
    let scratch = dir.join(format!("{tmp_prefix}{}.scratch", std::process::id()));
    fs::create_dir(&scratch).with_context(|| format!("failed to create {scratch:?}"))?;
    let context = FixtureBuild {
        out: &out,
        scratch: &scratch,
        lock: &lock,
    };
    let built = build(&context).with_context(|| format!("failed to build fixture {name}"));
    let cleaned = remove_tree(&scratch);
    if let Err(err) = built {
        // Best effort: if this fails too, the next builder removes the file as a leftover, and
        // the build error is the one worth reporting.
        let _ = remove_tree(&out);
        return Err(err);
    }
    cleaned?;
    // Make the content durable before the name that promises it is complete.
    File::open(&out)
        .and_then(|file| file.sync_all())
        .with_context(|| format!("failed to sync {out:?}"))?;
    fs::rename(&out, &ready).with_context(|| format!("failed to rename {out:?} to {ready:?}"))?;
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("failed to sync {dir:?}"))?;
    drop(lock);
    Ok(ready)
}

/// Deletes what killed builds left behind. Only called with the fixture's lock held, so nothing
/// alive is using these paths.
fn remove_leftovers(dir: &Path, tmp_prefix: &str) -> anyhow::Result<()> {
    for item in fs::read_dir(dir).with_context(|| format!("failed to list {dir:?}"))? {
        let item = item.with_context(|| format!("failed to list {dir:?}"))?;
        if item
            .file_name()
            .as_encoded_bytes()
            .starts_with(tmp_prefix.as_bytes())
        {
            remove_tree(&item.path())?;
        }
    }
    Ok(())
}

/// Removes a file or directory tree, first detaching anything mounted inside it: debootstrap
/// mounts `proc` and `sys` in its target, and a killed run leaves them mounted, where a recursive
/// delete would wander into the host's `/sys`.
fn remove_tree(path: &Path) -> anyhow::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err).with_context(|| format!("failed to lstat {path:?}")),
    };
    if !meta.is_dir() {
        return fs::remove_file(path).with_context(|| format!("failed to remove {path:?}"));
    }
    for mount_point in mounts_below(path)?.iter().rev() {
        nix::mount::umount2(mount_point, nix::mount::MntFlags::MNT_DETACH)
            .with_context(|| format!("failed to unmount {mount_point:?}"))?;
    }
    fs::remove_dir_all(path).with_context(|| format!("failed to remove {path:?}"))
}

/// Mount points strictly below `dir`, sorted so that parents come before their children.
fn mounts_below(dir: &Path) -> anyhow::Result<BTreeSet<PathBuf>> {
    let dir = fs::canonicalize(dir).with_context(|| format!("failed to resolve {dir:?}"))?;
    let mountinfo = fs::read("/proc/self/mountinfo").context("failed to read mountinfo")?;
    let mut below = BTreeSet::new();
    for line in mountinfo.split(|&b| b == b'\n') {
        // Field 5 is the mount point, with space, tab, newline and backslash escaped as \ooo.
        let Some(field) = line.split(|&b| b == b' ').nth(4) else {
            continue;
        };
        let mount_point = PathBuf::from(std::ffi::OsString::from_vec(unescape_octal(field)));
        if mount_point != dir && mount_point.starts_with(&dir) {
            below.insert(mount_point);
        }
    }
    Ok(below)
}

fn unescape_octal(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let digits = field.get(i + 1..i + 4);
        match digits {
            Some(d) if field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            _ => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

fn build_busybox_rootfs(out: &Path) -> anyhow::Result<()> {
    let binary = fs::read(BUSYBOX)
        .with_context(|| format!("failed to read {BUSYBOX} (is busybox-static installed?)"))?;
    let list = Command::new(BUSYBOX)
        .arg("--list")
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("failed to run {BUSYBOX} --list"))?;
    if !list.status.success() {
        bail!("{BUSYBOX} --list exited with {}", list.status);
    }
    let applets: BTreeSet<String> = String::from_utf8(list.stdout)
        .context("busybox --list printed something that is not UTF-8")?
        .lines()
        .map(str::trim)
        .filter(|name| !name.is_empty() && *name != "busybox")
        .map(str::to_owned)
        .collect();
    if !applets.contains("sh") {
        bail!("{BUSYBOX} has no sh applet, so it cannot make a usable root file system");
    }

    // Sorted by name like a `tar --sort=name`, so the archive lists a directory before its
    // contents and two builds on one host are byte-identical.
    let mut layer = LayerBuilder::new().dir("bin", 0o755);
    let mut bin: Vec<(String, bool)> = applets.into_iter().map(|a| (a, false)).collect();
    bin.push(("busybox".to_owned(), true));
    bin.sort();
    for (name, is_binary) in bin {
        let path = format!("bin/{name}");
        layer = if is_binary {
            layer.file(path, 0o755, &binary)
        } else {
            layer.symlink(path, "busybox")
        };
    }
    let tar = layer
        .dir("etc", 0o755)
        .file(
            "etc/group",
            0o644,
            "root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n",
        )
        .file(
            "etc/passwd",
            0o644,
            "root:x:0:0:root:/root:/bin/sh\n\
             user:x:1000:1000:user:/home/user:/bin/sh\n\
             nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        )
        .dir("home", 0o755)
        .dir("home/user", 0o755)
        .owner(1000, 1000)
        .dir("root", 0o700)
        .dir("tmp", 0o1777)
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .dir("var", 0o755)
        .finish();
    fs::write(out, tar).with_context(|| format!("failed to write {out:?}"))
}

fn build_debootstrap_rootfs(build: &FixtureBuild<'_>) -> anyhow::Result<()> {
    let rootfs = build.scratch.join("rootfs");
    let log_path = build.scratch.join("debootstrap.log");
    let mirror = debian_mirror();
    // Without a mirror argument debootstrap uses its own default.
    let from = mirror.as_deref().unwrap_or("debootstrap's default mirror");
    let log = File::create(&log_path).with_context(|| format!("failed to create {log_path:?}"))?;
    let started = Instant::now();
    let status = build
        .command("debootstrap")
        .args(["--variant=minbase", "bookworm"])
        .arg(&rootfs)
        .args(&mirror)
        .stdin(Stdio::null())
        .stdout(
            log.try_clone()
                .context("failed to duplicate the log file")?,
        )
        .stderr(log)
        .status()
        .context("failed to run debootstrap (is the debootstrap package installed?)")?;
    if !status.success() {
        // The scratch directory, log included, is deleted after the build, so the tail goes
        // into the error where the test output keeps it.
        let log = fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "debootstrap from {from} exited with {status}; last lines:\n{}",
            tail.join("\n")
        );
    }
    let debootstrapped = started.elapsed();
    gnutar::create_with_gnu_tar_to(&rootfs, build.out)?;
    // Printed rather than logged: the first run of a test pays these minutes, and whoever waits
    // for it should see why.
    eprintln!(
        "built {DEBOOTSTRAP_ROOTFS} from {from}: debootstrap {:.1}s, total {:.1}s",
        debootstrapped.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The Debian mirror to debootstrap from: `$IMG_DEBIAN_MIRROR`, else the first `.../debian` URI
/// in the host's apt sources (which is known to be reachable from this host), else none, and
/// debootstrap uses its own default. The repository names no mirror host itself: which mirror
/// a machine may reach is the machine's configuration.
pub fn debian_mirror() -> Option<String> {
    if let Ok(mirror) = std::env::var(DEBIAN_MIRROR_VAR)
        && !mirror.is_empty()
    {
        return Some(mirror);
    }
    let mut sources = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut extra: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        extra.sort();
        sources.extend(extra.into_iter().filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("list" | "sources")
            )
        }));
    }
    for source in sources {
        let Ok(text) = fs::read_to_string(&source) else {
            continue;
        };
        for line in text.lines().map(str::trim) {
            // One-line style: `deb [opts] URI suite ...`; deb822 style: `URIs: URI ...`.
            let uris: Vec<&str> = if let Some(rest) = line.strip_prefix("URIs:") {
                rest.split_whitespace().collect()
            } else if line.starts_with("deb ") {
                line.split_whitespace()
                    .skip(1)
                    .filter(|word| word.contains("://"))
                    .take(1)
                    .collect()
            } else {
                Vec::new()
            };
            if let Some(uri) = uris
                .into_iter()
                .find(|uri| uri.trim_end_matches('/').ends_with("/debian"))
            {
                return Some(uri.trim_end_matches('/').to_owned());
            }
        }
    }
    None
}

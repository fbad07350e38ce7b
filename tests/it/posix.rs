//! POSIX conformance of a writable imgfs mount: the crates.io suites pjdfstest and fsx run
//! against the `imgfs` binary, and a concurrent stress run whose tree must survive unmount,
//! commit and remount unchanged. Counts and the comparison with kernel overlayfs are in
//! docs/benchmarks.md, "POSIX conformance".
//!
//! Needs root, /dev/fuse, fusermount3, the user `tests` and the suites under
//! `$IMG_TOOLS/bin` (default /var/tmp/img-tools/bin); `tools/setup` installs all of them. Without
//! them each test prints why and skips, except with CI=true, where it fails.
//!
//! The tests drive the `imgfs` binary next to this test executable (`target/<profile>/imgfs`);
//! they never build it. `cargo test --workspace` builds it (imgfs's own integration tests need
//! it); after `cargo test -p tests` alone, run `cargo build -p imgfs` first, or the tests fail and
//! say so. A stale binary is tested as it is.
//!
//! `IMGFS_MOUNT_ARGS` adds arguments to every `imgfs mount` (whitespace-separated):
//! tools/test runs these tests a second time with `--no-io-uring`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use tests::{Manifest, assert_same};

/// pjdfstest 0.2.2 cases that fail on a writable imgfs mount, each with the reason. Every case
/// not listed here must pass or be skipped. None at the moment: the `*::enametoolong_component`
/// cases (lookup said ENOENT for a name over NAME_MAX) were fixed in `Tree::lookup`.
///
/// Kernel overlayfs on ext4 fails the `::char` cases (creating a character device there is
/// EPERM), which imgfs passes: imgfs stores device nodes as metadata and never opens them.
const PJDFSTEST_EXPECTED_FAILURES: &[&str] = &[];

/// The pjdfstest configuration: every optional feature Linux has, and the Debian names of the
/// dummy users (nobody's group is `nogroup` there). The `erofs_*` cases stay skipped because they
/// need the mount remounted read-only (`allow_remount`), and `link::link_count_max` because
/// `pathconf` reports no LINK_MAX for FUSE (nor for overlayfs).
const PJDFSTEST_CONFIG: &str = r#"
[features]
posix_fallocate = {}
rename_ctime = {}
utime_now = {}
utimensat = {}
[settings]
naptime = 0.001
allow_remount = false
expected_failures = []
[dummy_auth]
entries = [["nobody", "nogroup"], ["tests", "tests"]]
"#;

/// The fsx configuration: every operation fsx has on Linux, mmap reads and writes included, on
/// a file of up to 1 MiB (16 chunks of 64 KiB) so operations cross chunk boundaries.
const FSX_CONFIG: &str = r#"
flen = 1048576
[opsize]
max = 131072
[weights]
close_open = 1
read = 10
write = 10
mapread = 10
mapwrite = 10
invalidate = 1
truncate = 2
fsync = 1
fdatasync = 1
posix_fallocate = 1
punch_hole = 1
sendfile = 1
posix_fadvise = 1
copy_file_range = 1
"#;

const FSX_SEEDS: [u64; 3] = [1, 2, 3];
const FSX_OPS: u64 = 100_000;

/// Where `tools/setup` installs the suites; `IMG_TOOLS` moves it (in both).
const DEFAULT_TOOLS_DIR: &str = "/var/tmp/img-tools";

// ---- prerequisites ----

/// A suite's binary: in `$IMG_TOOLS/bin`, then on `PATH`.
fn tool(name: &str) -> Option<PathBuf> {
    let root = std::env::var_os("IMG_TOOLS").unwrap_or_else(|| DEFAULT_TOOLS_DIR.into());
    let paths = std::env::var_os("PATH").unwrap_or_default();
    std::iter::once(Path::new(&root).join("bin"))
        .chain(std::env::split_paths(&paths))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Whether the test can run here. If not, it prints why and returns false, or panics with CI=true
/// (CI must run every test, never skip one).
fn can_run(tools: &[&str]) -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root".to_string());
    }
    if !Path::new("/dev/fuse").exists() {
        missing.push("/dev/fuse".to_string());
    }
    for t in ["fusermount3"].iter().chain(tools) {
        if tool(t).is_none() {
            missing.push(format!("{t} (run tools/setup)"));
        }
    }
    if tools.contains(&"pjdfstest")
        && nix::unistd::User::from_name("tests")
            .ok()
            .flatten()
            .is_none()
    {
        missing.push("the user tests for pjdfstest (run tools/setup)".to_string());
    }
    if missing.is_empty() {
        return true;
    }
    let why = format!("needs {}", missing.join(", "));
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true, so this test may not skip, but it {why}");
    }
    eprintln!("skipped: this test {why}");
    false
}

/// The `imgfs` binary of the same build as this test: the test runs from
/// `target/<profile>/deps/`, and cargo puts binaries in `target/<profile>/`.
fn imgfs_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("failed to find the test executable")?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("imgfs"))
        .with_context(|| format!("{exe:?} is not in a cargo target directory"))?;
    ensure!(
        bin.is_file(),
        "no imgfs binary at {bin:?}: build it with `cargo build -p imgfs` \
         (`cargo test --workspace` builds it; `cargo test -p tests` alone does not)"
    );
    Ok(bin)
}

// ---- a store and its mounts ----

/// A scratch directory on /var/tmp holding an imgfs store with an empty committed snapshot `base`,
/// the mount point, and whatever a test needs beside them. Readable by everyone: pjdfstest
/// switches to unprivileged users, who must be able to reach the mount point.
struct Scratch {
    dir: tempfile::TempDir,
    imgfs: PathBuf,
}

impl Scratch {
    fn create() -> anyhow::Result<Scratch> {
        let imgfs = imgfs_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("img-posix-")
            .tempdir_in("/var/tmp")
            .context("failed to create a scratch directory in /var/tmp")?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        let scratch = Scratch { dir, imgfs };
        let empty = scratch.path("empty.tar");
        fs::write(&empty, tar::Builder::new(Vec::new()).into_inner()?)?;
        scratch.imgfs(&["init".as_ref(), scratch.path("store").as_os_str()])?;
        scratch.imgfs(&[
            "import".as_ref(),
            "--store".as_ref(),
            scratch.path("store").as_os_str(),
            "--name".as_ref(),
            "base".as_ref(),
            empty.as_os_str(),
        ])?;
        Ok(scratch)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs an imgfs command that must succeed.
    fn imgfs(&self, args: &[&std::ffi::OsStr]) -> anyhow::Result<Output> {
        let out = Command::new(&self.imgfs)
            .args(args)
            .output()
            .with_context(|| format!("failed to run {:?}", self.imgfs))?;
        ensure!(
            out.status.success(),
            "imgfs {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out)
    }

    /// Mounts a writable child of `snapshot` at `<scratch>/<point>`, to be committed as `commit`
    /// when unmounted.
    fn mount(&self, snapshot: &str, commit: Option<&str>, point: &str) -> anyhow::Result<Mount> {
        let point = self.path(point);
        fs::create_dir_all(&point)?;
        let log = self.path(&format!(
            "{}.log",
            point.file_name().unwrap().to_string_lossy()
        ));
        let mut cmd = Command::new(&self.imgfs);
        cmd.arg("mount")
            .arg("--store")
            .arg(self.path("store"))
            .args(["--snapshot", snapshot, "--writable", "--daemon"]);
        if let Ok(extra) = std::env::var("IMGFS_MOUNT_ARGS") {
            cmd.args(extra.split_whitespace());
        }
        if let Some(name) = commit {
            cmd.args(["--commit", name]);
        }
        // --daemon returns once the mount is ready; the server keeps writing to the log.
        let status = cmd
            .arg(&point)
            .stdin(Stdio::null())
            .stderr(fs::File::create(&log)?)
            .status()
            .with_context(|| format!("failed to run {:?}", self.imgfs))?;
        let log_text = || fs::read_to_string(&log).unwrap_or_default();
        ensure!(
            status.success(),
            "imgfs mount {snapshot} failed: {}",
            log_text()
        );
        Ok(Mount {
            imgfs: self.imgfs.clone(),
            point,
            log,
            mounted: true,
        })
    }
}

/// A mounted imgfs; dropping it unmounts (and so commits) it, so a failed test leaves no mount.
struct Mount {
    imgfs: PathBuf,
    point: PathBuf,
    log: PathBuf,
    mounted: bool,
}

impl Mount {
    /// Unmounts and waits until the server has exited, its commit included.
    fn unmount(mut self) -> anyhow::Result<()> {
        let out = Command::new(&self.imgfs)
            .arg("umount")
            .arg(&self.point)
            .output()?;
        self.mounted = !out.status.success();
        ensure!(
            out.status.success(),
            "imgfs umount {:?} failed: {}",
            self.point,
            String::from_utf8_lossy(&out.stderr)
        );
        // A handler that hit an I/O error or corruption logs "request failed", one that panicked
        // "panicked". Other errors are not counted: fuser logs one when a reply finds its request
        // already gone (the caller was interrupted), which is harmless.
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        ensure!(
            !log.contains("request failed") && !log.contains("panicked"),
            "the imgfs server logged errors:\n{log}"
        );
        Ok(())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        let ok = Command::new(&self.imgfs)
            .arg("umount")
            .arg(&self.point)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still uses the mount: detach it so the scratch directory can go.
            let _ = Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.point)
                .status();
        }
    }
}

// ---- pjdfstest ----

/// One pjdfstest result line: `name   ok|FAILED|skipped|PASSED UNEXPECTEDLY|failed as expected`.
fn pjdfstest_results(stdout: &str) -> BTreeMap<String, (String, String)> {
    const OUTCOMES: [&str; 5] = [
        "ok",
        "FAILED",
        "skipped",
        "PASSED UNEXPECTEDLY",
        "failed as expected",
    ];
    let mut results = BTreeMap::new();
    let mut lines = stdout.lines().peekable();
    while let Some(line) = lines.next() {
        let Some((name, rest)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        let outcome = rest.trim();
        if !name.contains("::") || !OUTCOMES.contains(&outcome) {
            continue;
        }
        // A failure is followed by its panic message, indented by a tab.
        let detail = match lines.peek() {
            Some(next) if outcome == "FAILED" && next.starts_with('\t') => next.trim().to_string(),
            _ => String::new(),
        };
        results.insert(name.to_string(), (outcome.to_string(), detail));
    }
    results
}

#[test]
fn pjdfstest_passes_on_a_writable_mount() -> anyhow::Result<()> {
    if !can_run(&["pjdfstest"]) {
        return Ok(());
    }
    let scratch = Scratch::create()?;
    let config = scratch.path("pjdfstest.toml");
    fs::write(&config, PJDFSTEST_CONFIG)?;
    // A directory on another file system, for the EXDEV cases.
    let secondary = scratch.path("secondary");
    fs::create_dir(&secondary)?;
    fs::set_permissions(&secondary, fs::Permissions::from_mode(0o755))?;
    let mount = scratch.mount("base", None, "mnt")?;
    let out = Command::new(tool("pjdfstest").unwrap())
        .arg("-c")
        .arg(&config)
        .arg("-p")
        .arg(&mount.point)
        .arg("-s")
        .arg(&secondary)
        .current_dir(&mount.point)
        .env("NO_COLOR", "1")
        .env("RUST_BACKTRACE", "0")
        .output()
        .context("failed to run pjdfstest")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    mount.unmount()?;

    let results = pjdfstest_results(&stdout);
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("Summary:"))
        .with_context(|| {
            format!(
                "pjdfstest printed no summary ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    eprintln!("pjdfstest on imgfs: {summary}");
    let total: usize = summary
        .rsplit_once(", ")
        .and_then(|(_, t)| t.strip_suffix(" total"))
        .and_then(|t| t.parse().ok())
        .with_context(|| format!("cannot read the total of {summary:?}"))?;
    ensure!(
        results.len() == total && total >= 398,
        "read {} pjdfstest results but it ran {total} (0.2.2 has 398): the output format changed",
        results.len()
    );
    let unexpected: Vec<String> = results
        .iter()
        .filter(|(name, (outcome, _))| {
            !matches!(outcome.as_str(), "ok" | "skipped")
                && !PJDFSTEST_EXPECTED_FAILURES.contains(&name.as_str())
        })
        .map(|(name, (outcome, detail))| format!("{name}: {outcome} {detail}"))
        .collect();
    for name in PJDFSTEST_EXPECTED_FAILURES {
        if results.get(*name).is_some_and(|(o, _)| o == "ok") {
            eprintln!("{name} passes now: take it off PJDFSTEST_EXPECTED_FAILURES");
        }
    }
    ensure!(
        unexpected.is_empty(),
        "pjdfstest cases failed on imgfs:\n{}",
        unexpected.join("\n")
    );
    Ok(())
}

// ---- fsx ----

#[test]
fn fsx_finds_no_data_error_on_a_writable_mount() -> anyhow::Result<()> {
    if !can_run(&["fsx"]) {
        return Ok(());
    }
    let scratch = Scratch::create()?;
    let config = scratch.path("fsx.toml");
    fs::write(&config, FSX_CONFIG)?;
    let mount = scratch.mount("base", None, "mnt")?;
    // The seeds run side by side, on one file each: fsx spends most of its time waiting for
    // fsync, so this takes a third of the time of running them one after another.
    let runs: Vec<(u64, PathBuf, std::process::Child)> = FSX_SEEDS
        .iter()
        .map(|&seed| {
            let artifacts = scratch.path(&format!("fsx-{seed}"));
            fs::create_dir(&artifacts)?;
            let child = Command::new(tool("fsx").unwrap())
                .arg("-f")
                .arg(&config)
                .args(["-N", &FSX_OPS.to_string(), "-S", &seed.to_string()])
                .arg("-P")
                .arg(&artifacts)
                .arg(mount.point.join(format!("fsx-{seed}")))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("failed to run fsx")?;
            Ok((seed, artifacts, child))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut failures = Vec::new();
    for (seed, artifacts, child) in runs {
        let out = child.wait_with_output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() || !text.contains("All operations completed A-OK!") {
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            failures.push(format!(
                "fsx -S {seed} -N {FSX_OPS} failed ({}); artifacts in {artifacts:?}:\n{}",
                out.status,
                tail.join("\n")
            ));
        }
    }
    mount.unmount()?;
    if !failures.is_empty() {
        // Keep the artifacts (the expected and the actual file) for whoever reads the failure.
        let kept = scratch.dir.keep();
        bail!("{}\n(scratch kept at {kept:?})", failures.join("\n\n"));
    }
    Ok(())
}

// ---- concurrent stress, then commit and remount ----

/// A small, fast generator (splitmix64): the test needs varied operations, not good randomness,
/// and the seed in a failure message reproduces a thread's choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A path of one to three components from a small pool, so that the threads keep running
    /// into each other's files and directories.
    fn path(&mut self, root: &Path) -> PathBuf {
        const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];
        let mut p = root.to_path_buf();
        for _ in 0..=self.below(3) {
            p.push(NAMES[self.below(NAMES.len() as u64) as usize]);
        }
        p
    }
}

/// What a racing operation may legitimately fail with: another thread got there first, or the
/// path runs through something that is not (or no longer) a directory.
fn expected_race(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ENOENT
                | libc::EEXIST
                | libc::ENOTEMPTY
                | libc::ENOTDIR
                | libc::EISDIR
                | libc::EINVAL
        )
    )
}

/// Random create/write/rename/unlink/mkdir/rmdir/link/truncate below `root` until `until`.
/// Returns how many operations succeeded.
fn stress(root: &Path, seed: u64, until: Instant) -> anyhow::Result<u64> {
    let mut rng = Rng(seed);
    let mut done = 0;
    while Instant::now() < until {
        let p = rng.path(root);
        let op = rng.below(8);
        let result = match op {
            0 | 1 => OpenOptions::new()
                .write(true)
                .create(op == 0)
                .open(&p)
                .and_then(|f| {
                    let len = 1 + rng.below(96 * 1024) as usize;
                    let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                    f.write_all_at(&data, rng.below(192 * 1024))
                }),
            2 => fs::rename(&p, rng.path(root)),
            3 => fs::remove_file(&p),
            4 => fs::create_dir(&p),
            5 => fs::remove_dir(&p),
            6 => fs::hard_link(&p, rng.path(root)),
            _ => OpenOptions::new()
                .write(true)
                .open(&p)
                .and_then(|f| f.set_len(rng.below(256 * 1024))),
        };
        match result {
            Ok(()) => done += 1,
            Err(e) if expected_race(&e) => {}
            // link(2) refuses directories.
            Err(e) if op == 6 && e.raw_os_error() == Some(libc::EPERM) => {}
            Err(e) => bail!("stress seed {seed:#x}: operation {op} on {p:?} failed: {e}"),
        }
    }
    Ok(done)
}

/// The inode number of every entry below `root`, by path relative to it.
fn inode_numbers(root: &Path) -> anyhow::Result<BTreeMap<PathBuf, u64>> {
    let mut out = BTreeMap::new();
    for item in walkdir::WalkDir::new(root).min_depth(1) {
        let item = item?;
        let rel = item.path().strip_prefix(root)?.to_path_buf();
        out.insert(rel, item.metadata()?.ino());
    }
    Ok(out)
}

#[test]
fn a_tree_made_by_concurrent_writers_survives_commit_and_remount() -> anyhow::Result<()> {
    if !can_run(&[]) {
        return Ok(());
    }
    let scratch = Scratch::create()?;
    let mount = scratch.mount("base", Some("stressed"), "mnt")?;
    let until = Instant::now() + Duration::from_secs(10);
    let counts = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4u64)
            .map(|i| {
                let root = mount.point.clone();
                scope.spawn(move || stress(&root, 0x5eed_0000 + i, until))
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a stress thread panicked"))
            .collect::<anyhow::Result<Vec<u64>>>()
    })?;
    eprintln!("stress: operations that succeeded per thread: {counts:?}");
    ensure!(
        counts.iter().all(|&n| n > 100),
        "a stress thread got almost nothing done: {counts:?}"
    );
    let before = Manifest::of_dir(&mount.point)?;
    let inodes = inode_numbers(&mount.point)?;
    eprintln!("stress: {} entries in the tree at unmount", before.len());
    ensure!(before.len() > 10, "the stress run left a trivial tree");
    mount.unmount()?;

    let mount = scratch.mount("stressed", None, "again")?;
    let after = Manifest::of_dir(&mount.point)?;
    assert_same(&before, &after);
    // Every entry is in the sample: the tree stays at a few thousand entries.
    assert_eq!(
        inode_numbers(&mount.point)?,
        inodes,
        "inode numbers changed across commit and remount"
    );

    // The committed tree is still a working file system.
    let listed: BTreeSet<PathBuf> = fs::read_dir(&mount.point)?
        .map(|e| e.map(|e| PathBuf::from(e.file_name())))
        .collect::<Result<_, _>>()?;
    let top: BTreeSet<PathBuf> = before
        .iter()
        .filter(|(p, _)| p.components().count() == 1)
        .map(|(p, _)| p.to_path_buf())
        .collect();
    assert_eq!(listed, top);
    let fresh = mount.point.join("fresh");
    fs::create_dir(&fresh)?;
    fs::write(fresh.join("file"), b"written after the remount")?;
    assert_eq!(fs::read(fresh.join("file"))?, b"written after the remount");
    fs::remove_file(fresh.join("file"))?;
    fs::remove_dir(&fresh)?;
    let first = mount
        .point
        .join(top.iter().next().context("no top-level entry")?);
    match fs::symlink_metadata(&first)?.is_dir() {
        true => fs::remove_dir_all(&first)?,
        false => fs::remove_file(&first)?,
    }
    ensure!(
        matches!(fs::symlink_metadata(&first), Err(e) if e.kind() == ErrorKind::NotFound),
        "{first:?} is still there after deleting it"
    );
    mount.unmount()?;

    let fsck = scratch.imgfs(&["fsck".as_ref(), scratch.path("store").as_os_str()])?;
    eprintln!("{}", String::from_utf8_lossy(&fsck.stdout).trim());
    Ok(())
}

//! GNU tar (`/usr/bin/tar`) as the reference implementation: extract, list and create archives
//! with it, to check our layers against a tool everybody trusts.
//!
//! GNU tar knows nothing about OCI layers: it does **not** process whiteouts. A `dir/.wh.name`
//! entry is extracted as an ordinary empty file called `.wh.name` (and `name` is left alone),
//! and `.wh..wh..opq` as an ordinary file too. Compare against GNU tar only for what a single
//! layer puts into an empty directory; applying layers on top of each other is imgfs's job.
//!
//! Extraction preserves owners, modes and xattrs, which needs root (or at least CAP_CHOWN,
//! CAP_MKNOD and CAP_SYS_ADMIN for `trusted.*` xattrs).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;

use anyhow::{Context, bail};

/// The binary the project tests against; a fixed path, so a different `tar` on `$PATH` (busybox,
/// bsdtar) cannot quietly change what "reference behaviour" means.
pub const GNU_TAR: &str = "/usr/bin/tar";

/// Options that make GNU tar keep everything a layer can carry: xattrs in every namespace,
/// and numeric owners (the names inside an image mean nothing on the host). Modes are kept by
/// `-p` at the call site.
const PRESERVE: &[&str] = &[
    "--xattrs",
    "--xattrs-include=*",
    "--same-owner",
    "--numeric-owner",
];

/// Where an archive comes from: a file, or bytes in memory. Either may be gzip-compressed.
#[derive(Clone, Copy, Debug)]
pub enum TarSource<'a> {
    Path(&'a Path),
    Bytes(&'a [u8]),
}

impl<'a> From<&'a Path> for TarSource<'a> {
    fn from(path: &'a Path) -> Self {
        TarSource::Path(path)
    }
}

impl<'a> From<&'a PathBuf> for TarSource<'a> {
    fn from(path: &'a PathBuf) -> Self {
        TarSource::Path(path)
    }
}

impl<'a> From<&'a [u8]> for TarSource<'a> {
    fn from(bytes: &'a [u8]) -> Self {
        TarSource::Bytes(bytes)
    }
}

impl<'a> From<&'a Vec<u8>> for TarSource<'a> {
    fn from(bytes: &'a Vec<u8>) -> Self {
        TarSource::Bytes(bytes)
    }
}

impl TarSource<'_> {
    /// Whether the archive starts with the gzip magic. GNU tar only sniffs compression when it
    /// can seek in a named file, and we always feed it through stdin, so we tell it ourselves.
    fn is_gzip(&self) -> anyhow::Result<bool> {
        let mut magic = [0u8; 2];
        let n = match self {
            TarSource::Bytes(bytes) => {
                let n = bytes.len().min(2);
                magic[..n].copy_from_slice(&bytes[..n]);
                n
            }
            TarSource::Path(path) => File::open(path)
                .and_then(|mut file| file.read(&mut magic))
                .with_context(|| format!("failed to read {path:?}"))?,
        };
        Ok(n == 2 && magic == [0x1f, 0x8b])
    }

    fn describe(&self) -> String {
        match self {
            TarSource::Path(path) => format!("{path:?}"),
            TarSource::Bytes(bytes) => format!("a {}-byte archive", bytes.len()),
        }
    }
}

/// Extracts an archive into `dest` (which must exist) as GNU tar does with
/// `--xattrs --xattrs-include='*' --same-owner --numeric-owner -xpf - -C dest`.
///
/// Fails with tar's stderr if tar exits non-zero; note that GNU tar exits 0 after only warning
/// about (and skipping) members with `..` in their names or a leading `/`.
pub fn extract_with_gnu_tar<'a>(tar: impl Into<TarSource<'a>>, dest: &Path) -> anyhow::Result<()> {
    let tar = tar.into();
    let mut args: Vec<&str> = PRESERVE.to_vec();
    if tar.is_gzip()? {
        args.push("--gzip");
    }
    let dest_arg = dest.as_os_str().to_owned();
    let mut command = Command::new(GNU_TAR);
    command.args(&args).args(["-xpf", "-", "-C"]).arg(&dest_arg);
    run(command, Some(tar))
        .with_context(|| format!("failed to extract {} into {dest:?}", tar.describe()))?;
    Ok(())
}

/// Lists an archive as `tar -tvf -` does, one line per member, e.g. to show that a hostile archive
/// really contains a `../x` member.
///
/// Names and link targets are shown as stored (`--absolute-names`): by default GNU tar strips a
/// leading `/` or `../` even when only listing, which would hide exactly what hostile archives
/// are about. Owners are numeric and times are full (`--full-time`).
pub fn list_with_gnu_tar<'a>(tar: impl Into<TarSource<'a>>) -> anyhow::Result<Vec<String>> {
    let tar = tar.into();
    let mut command = Command::new(GNU_TAR);
    command.args(["--numeric-owner", "--full-time", "--absolute-names"]);
    if tar.is_gzip()? {
        command.arg("--gzip");
    }
    command.args(["-tvf", "-"]);
    let stdout =
        run(command, Some(tar)).with_context(|| format!("failed to list {}", tar.describe()))?;
    Ok(String::from_utf8_lossy(&stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

/// Archives the contents of `src_dir` (members named `./`, `./etc`, ...) as a deterministic PAX
/// tar: sorted by name, numeric owners, all xattrs, and no atime/ctime records, which would make
/// two archives of the same tree differ.
pub fn create_with_gnu_tar(src_dir: &Path) -> anyhow::Result<Vec<u8>> {
    run(create_command(src_dir, Path::new("-")), None)
        .with_context(|| format!("failed to archive {src_dir:?}"))
}

/// `create_with_gnu_tar`, written straight to the file `out` instead of memory, for trees too big
/// to hold (a debootstrap is about 200 MB).
pub fn create_with_gnu_tar_to(src_dir: &Path, out: &Path) -> anyhow::Result<()> {
    run(create_command(src_dir, out), None)
        .with_context(|| format!("failed to archive {src_dir:?} into {out:?}"))?;
    Ok(())
}

fn create_command(src_dir: &Path, out: &Path) -> Command {
    let mut command = Command::new(GNU_TAR);
    command
        .args([
            "--sort=name",
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            "--format=pax",
            "--pax-option=delete=atime,delete=ctime",
            "-cf",
        ])
        .arg(out)
        .arg("-C")
        .arg(src_dir)
        .arg(".");
    command
}

/// Runs tar with `input` (if any) on stdin and returns its stdout, or an error carrying its
/// stderr.
fn run(mut command: Command, input: Option<TarSource<'_>>) -> anyhow::Result<Vec<u8>> {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    match input {
        None => command.stdin(Stdio::null()),
        Some(TarSource::Bytes(_)) => command.stdin(Stdio::piped()),
        Some(TarSource::Path(path)) => {
            let file = File::open(path).with_context(|| format!("failed to open {path:?}"))?;
            command.stdin(file)
        }
    };
    let mut child = command
        .spawn()
        .with_context(|| format!("failed to run {GNU_TAR}"))?;
    let output = thread::scope(|scope| {
        if let (Some(mut stdin), Some(TarSource::Bytes(bytes))) = (child.stdin.take(), input) {
            // Feed stdin from another thread: tar may fill its stdout or stderr pipe before it
            // has read all of its input, and then neither side would make progress.
            scope.spawn(move || {
                // tar may stop reading early (a truncated or hostile archive); the broken pipe
                // that causes is not the error worth reporting, tar's own message is.
                let _ = stdin.write_all(bytes);
            });
        }
        child.wait_with_output()
    })
    .with_context(|| format!("failed to wait for {GNU_TAR}"))?;
    if !output.status.success() {
        bail!(
            "{GNU_TAR} exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }
    Ok(output.stdout)
}

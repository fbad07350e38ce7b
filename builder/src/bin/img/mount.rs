//! `img mount` and `img umount`: an image's file tree (or its tree as of one layer) on a
//! directory, served by a process of its own until `img umount`.
//!
//! `img mount` starts `img mount --serve` in a process group of its own and returns once that
//! process reports the mount ready on its standard output (or has failed, after printing why).
//! The serving process makes sure the backend has the image's snapshots, mounts one, records
//! itself in `<state>/mounts/<pid>.json` and waits for SIGTERM, SIGINT or SIGHUP; then it
//! unmounts, drops a writable mount's snapshot and removes its record. It keeps the state
//! lock only while it sets up. A read-only mount opens the backend read-only, without its
//! lock, so builds go on meanwhile; a writable one keeps the backend open (and locked) until
//! it ends. For an ordinary user the mount lives in img's user and mount namespaces, which the
//! serving process keeps alive: `img mount` prints the `nsenter` command that enters them.
//! A serving process that was killed leaves its mount and record behind; `img umount` (or any
//! command that reads the records) ends that mount without waiting on it and frees the rest
//! (`State::reap_mount`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use builder::state::{BackendKind, MountRecord, State};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};

#[derive(clap::Args)]
pub struct MountArgs {
    /// The image (NAME[:TAG] or NAME@DIGEST).
    image: String,
    /// An existing directory to mount it on.
    dir: PathBuf,
    /// Mount the tree as of this layer, counting from 1 (the base layer); default: the last.
    #[arg(long, value_name = "N")]
    layer: Option<usize>,
    /// Mount a writable copy: changes go to a snapshot of their own, dropped at `img umount`;
    /// the image never changes.
    #[arg(long)]
    writable: bool,
    /// The snapshot backend to mount from.
    #[arg(long, default_value = "fuse", env = "IMG_BACKEND")]
    backend: BackendKind,
    /// Serve the mount in this process (what `img mount` starts).
    #[arg(long, hide = true)]
    serve: bool,
}

impl MountArgs {
    pub fn is_serve(&self) -> bool {
        self.serve
    }
}

const READY: &str = "ready";

/// `img mount` as the user runs it: starts the serving process and waits until it is ready.
pub fn mount(state_dir: &Path, args: MountArgs) -> Result<()> {
    let dir = checked_dir(&args.dir)?;
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg("--state")
        .arg(state_dir)
        .arg("mount")
        .arg("--serve")
        .arg("--backend")
        .arg(args.backend.to_string());
    if let Some(n) = args.layer {
        cmd.arg("--layer").arg(n.to_string());
    }
    if args.writable {
        cmd.arg("--writable");
    }
    cmd.arg("--").arg(&args.image).arg(&dir);
    // A process group of its own: the terminal's ^C and hang-up do not reach it.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start the process that serves the mount")?;
    let mut line = String::new();
    let out = child.stdout.take().expect("stdout is piped");
    BufReader::new(out).read_line(&mut line)?;
    if line.trim_end() != READY {
        // The child printed why on our standard error.
        let status = child.wait()?;
        bail!("img mount failed ({status})");
    }
    let pid = child.id();
    println!("{}", dir.display());
    if builder::userns::inside() {
        eprintln!(
            "The mount is in img's user namespace. Enter it with:\n  \
             nsenter --target {pid} --user --mount --preserve-credentials"
        );
    }
    Ok(())
}

fn checked_dir(dir: &Path) -> Result<PathBuf> {
    let abs =
        std::fs::canonicalize(dir).with_context(|| format!("mount point {}", dir.display()))?;
    if !abs.is_dir() {
        bail!("mount point {} is not a directory", dir.display());
    }
    Ok(abs)
}

/// `img mount --serve`: sets up the mount, reports it ready, serves it until told to stop.
pub fn serve(state: State, args: MountArgs) -> Result<()> {
    // Blocked in every thread started from here on (they inherit the mask); this thread waits
    // for them, so every way out goes through the unmount.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(s);
    }
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&signals), None).context("cannot block signals")?;
    let dir = checked_dir(&args.dir)?;
    if state.mounts().iter().any(|m| m.dir == dir) {
        bail!(
            "{} is already an img mount; img umount it first",
            dir.display()
        );
    }
    let image = state.images.resolve(&args.image)?;
    let layers = image.config.rootfs.diff_ids.len();
    let n = args.layer.unwrap_or(layers);
    if layers == 0 {
        bail!(
            "image {} has no layers: there is nothing to mount",
            args.image
        );
    }
    if n == 0 || n > layers {
        bail!(
            "image {} has {layers} layer{}; --layer takes 1 to {layers}",
            args.image,
            if layers == 1 { "" } else { "s" }
        );
    }
    let chain = builder::image::chain_ids(&image.config.rootfs.diff_ids);
    let snapshot = chain[n - 1].to_string();
    let backend = state.backend(args.backend)?;
    builder::build::ensure_image_snapshot(backend.as_ref(), &state.images, &image)?;
    let pid = std::process::id();
    let start_time =
        imgfs::owner::process_start_time(pid).context("cannot read this process's start time")?;
    let (backend, key) = if args.writable {
        let key = format!("img-mount-{pid}");
        backend
            .prepare(&key, Some(&snapshot))
            .with_context(|| format!("failed to prepare a writable snapshot of {snapshot}"))?;
        (backend, Some(key))
    } else {
        drop(backend);
        (state.backend_read_only(args.backend)?, None)
    };
    let target = key.as_deref().unwrap_or(&snapshot);
    let mounted = match backend.mount(target, &dir) {
        Ok(m) => m,
        Err(e) => {
            if let Some(k) = &key {
                let _ = backend.remove(k);
            }
            return Err(e)
                .with_context(|| format!("failed to mount {} on {}", args.image, dir.display()));
        }
    };
    let record = MountRecord {
        pid,
        start_time,
        dir: dir.clone(),
        image: args.image.clone(),
        backend: args.backend,
        snapshot,
        key: key.clone(),
    };
    let mounts = state.mounts_dir();
    let record_path = mounts.join(format!("{pid}.json"));
    let written = std::fs::create_dir_all(&mounts)
        .map_err(anyhow::Error::from)
        .and_then(|()| {
            super::images::write_atomically(&record_path, |w| {
                serde_json::to_writer_pretty(w, &record)?;
                Ok(())
            })
        });
    if let Err(e) = written {
        let _ = mounted.unmount();
        if let Some(k) = &key {
            let _ = backend.remove(k);
        }
        return Err(e.context(format!(
            "failed to record the mount in {}",
            mounts.display()
        )));
    }
    // Other img commands may run while the mount is up.
    drop(state);
    println!("{READY}");
    // `img mount` has returned: nobody reads our output any more, and whoever ran it may wait
    // for the end of its output streams, which we share.
    let null = std::fs::File::options().write(true).open("/dev/null")?;
    let _ = nix::unistd::dup2_stdout(&null);
    let _ = nix::unistd::dup2_stderr(&null);
    let signal = signals.wait().context("cannot wait for signals")?;
    tracing::debug!(?signal, "unmounting");
    let unmounted = mounted.unmount();
    if let Some(k) = &key
        && let Err(e) = backend.remove(k)
    {
        tracing::error!(snapshot = %k, "cannot remove the writable snapshot: {e}");
    }
    let _ = std::fs::remove_file(&record_path);
    unmounted.with_context(|| format!("failed to unmount {}", dir.display()))
}

/// `img umount DIR`: stops the process serving the mount at DIR and waits until it is gone. If
/// that process is gone already (killed), cleans up what it left instead (`State::reap_mount`).
pub fn umount(state: &State, dir: &Path) -> Result<()> {
    let records = state.mount_records();
    // A symlink to the mount point needs resolving in full, which looks at the mount.
    let found = records
        .iter()
        .find(|m| m.dir == mount_point_path(dir))
        .or_else(|| {
            let abs = std::fs::canonicalize(dir).ok()?;
            records.iter().find(|m| m.dir == abs)
        });
    let Some(rec) = found.cloned() else {
        bail!("{} is not mounted by img mount", dir.display());
    };
    if !rec.alive() {
        state.reap_mount(&rec)?;
        eprintln!(
            "note: the img mount process {} was gone; its mount of {} is removed",
            rec.pid,
            dir.display()
        );
        return Ok(());
    }
    let pid = nix::unistd::Pid::from_raw(rec.pid as i32);
    match nix::sys::signal::kill(pid, Signal::SIGTERM) {
        // It ended between the look and the signal: the record is reaped below.
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot stop the img mount process {}", rec.pid));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while rec.alive() {
        if Instant::now() > deadline {
            bail!(
                "the img mount process {} has not finished unmounting {} after 60 s",
                rec.pid,
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // A process that was dying already (killed) when we looked left its record behind.
    if state.mount_records().contains(&rec) {
        state.reap_mount(&rec)?;
    }
    Ok(())
}

/// The absolute path of mount point `dir` as a mount record names it, resolved without looking
/// at `dir` itself: stat(2) of a FUSE mount point asks its server, which may be gone.
fn mount_point_path(dir: &Path) -> PathBuf {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    let resolved = match (parent, dir.file_name()) {
        (Some(p), Some(name)) => std::fs::canonicalize(p).map(|p| p.join(name)),
        (None, Some(name)) => std::env::current_dir().map(|p| p.join(name)),
        _ => std::fs::canonicalize(dir),
    };
    resolved.unwrap_or_else(|_| dir.to_path_buf())
}

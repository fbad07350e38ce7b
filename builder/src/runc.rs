//! The runc executor: runs one RUN step as a container on a mounted snapshot.
//!
//! This is the only module that starts containers. Each step gets a fresh bundle (a directory
//! holding `config.json`) whose root is the mounted snapshot; runc's own state lives under the
//! img state dir (`runc --root`), so two state dirs never see each other's containers.
//!
//! The container shares the host's network (like `docker build` with its default network), gets
//! generated `/etc/hosts` and the host's `/etc/resolv.conf` bind-mounted, and its own pid, mount,
//! ipc and uts namespaces. Mount points runc has to create in the root file system (`/proc` on an
//! image without one, an empty `/etc/hosts`) are removed again after the step, with their parent's
//! times restored, so they never end up in the layer; BuildKit does the same.
//!
//! A raised [`Interrupt`] stops the running step: `runc kill KILL`, then `runc delete --force`,
//! and the step fails with [`ExecError::Interrupted`]. Containers are named `img-PID-N` after the
//! img process that runs them, so that the next img can tell which ones a dead img left
//! (`remove_containers`).

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{UtimensatFlags, fstatat, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::UnlinkatFlags;
use oci_spec::runtime::{
    Capability, LinuxCapabilitiesBuilder, LinuxNamespaceType, MountBuilder, PosixRlimitBuilder,
    PosixRlimitType, ProcessBuilder, RootBuilder, Spec, UserBuilder,
};
use thiserror::Error;

use crate::interrupt::{Interrupt, Interrupted};

/// What to run, and as whom.
#[derive(Clone, Debug, Default)]
pub struct RunRequest {
    pub argv: Vec<String>,
    /// `KEY=value` entries, in order.
    pub env: Vec<String>,
    /// Absolute path in the container; it must exist.
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub hostname: String,
    /// Files that exist, read-only, only while the command runs (a heredoc script, say):
    /// absolute path in the container, content, mode.
    pub files: Vec<(String, Vec<u8>, u32)>,
}

#[derive(Debug, Error)]
pub enum ExecError {
    #[error("failed to prepare the container bundle in {path}: {source}")]
    Bundle { path: PathBuf, source: io::Error },
    #[error("failed to start {runc}: {source}")]
    Spawn { runc: PathBuf, source: io::Error },
    #[error("failed to write the runtime spec: {0}")]
    Spec(String),
    #[error("failed to inspect {path} in the root file system: {source}")]
    Rootfs { path: String, source: io::Error },
    #[error("runc was killed by a signal")]
    Killed,
    #[error("{0}")]
    Interrupted(Interrupted),
}

/// Runs commands in a root file system. The builder holds one as `&dyn Executor`, so tests can
/// record what would run without starting containers.
pub trait Executor: Send + Sync {
    /// Runs `req` with `rootfs` as `/`, copying its stdout and stderr to `log` as they arrive,
    /// and returns the exit code (128 + n for a process killed by signal n).
    fn run(&self, rootfs: &Path, req: &RunRequest, log: &mut dyn Write) -> Result<i32, ExecError>;
}

/// The capabilities Docker gives a RUN step (moby's `oci/caps/defaults.go`).
const DEFAULT_CAPS: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Mount points in the root file system that runc may have to create.
const STUB_CANDIDATES: [&str; 6] = [
    "/proc",
    "/dev",
    "/sys",
    "/etc",
    "/etc/hosts",
    "/etc/resolv.conf",
];

pub struct RuncExecutor {
    runc: PathBuf,
    /// runc's `--root`; also holds the bundles.
    state: PathBuf,
    next_id: AtomicU64,
    interrupt: Interrupt,
}

/// How often a running step looks at the interrupt flag.
const INTERRUPT_POLL: Duration = Duration::from_millis(100);

impl RuncExecutor {
    /// An executor keeping its state under `state` (created if missing). `runc` is looked up on
    /// `PATH` unless `$IMG_RUNC` names the binary.
    pub fn new(state: &Path) -> Result<RuncExecutor, ExecError> {
        fs::create_dir_all(state.join("bundles")).map_err(|source| ExecError::Bundle {
            path: state.to_owned(),
            source,
        })?;
        let runc = std::env::var_os("IMG_RUNC")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("runc"));
        Ok(RuncExecutor {
            runc,
            state: state.to_owned(),
            next_id: AtomicU64::new(0),
            interrupt: Interrupt::default(),
        })
    }

    /// Makes steps stop when `interrupt` is raised.
    pub fn interruptible(mut self, interrupt: Interrupt) -> RuncExecutor {
        self.interrupt = interrupt;
        self
    }

    /// Kills and deletes the containers in our runc root whose img process is gone (`gone`
    /// says so of an owner pid), with their bundles, and returns the owner of each one
    /// removed. A container whose id names no owner is not one of ours and is left alone.
    ///
    /// `runc delete --force` alone would do for a container that still runs (it kills it
    /// first), but `runc kill` first makes the container's processes go even if the delete
    /// then fails on the state a killed `runc run` left half written.
    pub fn remove_containers(&self, gone: &dyn Fn(u32) -> bool) -> Vec<u32> {
        let mut removed = Vec::new();
        let Ok(entries) = fs::read_dir(&self.state) else {
            return removed;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            let Some(owner) = container_owner(name) else {
                continue;
            };
            if !gone(owner) {
                continue;
            }
            tracing::info!(
                container = name,
                owner,
                "removing a container left by a dead img"
            );
            runc_quietly(&self.runc, &self.state, &["kill", name, "KILL"]);
            runc_quietly(&self.runc, &self.state, &["delete", "--force", name]);
            let _ = fs::remove_dir_all(self.state.join("bundles").join(name));
            removed.push(owner);
        }
        if let Ok(bundles) = fs::read_dir(self.state.join("bundles")) {
            for b in bundles.flatten() {
                let owner = b.file_name().to_str().and_then(container_owner);
                if owner.is_some_and(gone) {
                    let _ = fs::remove_dir_all(b.path());
                }
            }
        }
        removed
    }

    fn spec(&self, rootfs: &Path, req: &RunRequest, bundle: &Path) -> Result<Spec, ExecError> {
        let err = |e: oci_spec::OciSpecError| ExecError::Spec(e.to_string());
        let caps: std::collections::HashSet<Capability> = DEFAULT_CAPS.into_iter().collect();
        let capabilities = LinuxCapabilitiesBuilder::default()
            .bounding(caps.clone())
            .effective(caps.clone())
            .permitted(caps)
            .build()
            .map_err(err)?;
        let user = UserBuilder::default()
            .uid(req.uid)
            .gid(req.gid)
            .additional_gids(req.additional_gids.clone())
            .build()
            .map_err(err)?;
        let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map(|(_, hard)| hard)
            .unwrap_or(1024);
        let process = ProcessBuilder::default()
            .terminal(false)
            .args(req.argv.clone())
            .env(req.env.clone())
            .cwd(&req.cwd)
            .user(user)
            .capabilities(capabilities)
            // Docker does not set no_new_privileges for build steps: setuid binaries such as
            // `su` and `sudo` work in RUN.
            .no_new_privileges(false)
            // Docker raises the open-file limit of build steps to its own hard limit; so do we.
            .rlimits(vec![
                PosixRlimitBuilder::default()
                    .typ(PosixRlimitType::RlimitNofile)
                    .hard(nofile)
                    .soft(nofile)
                    .build()
                    .map_err(err)?,
            ])
            .build()
            .map_err(err)?;
        let root = RootBuilder::default()
            .path(rootfs)
            .readonly(false)
            .build()
            .map_err(err)?;

        let mut spec = Spec::default();
        spec.set_process(Some(process));
        spec.set_root(Some(root));
        spec.set_hostname(Some(req.hostname.clone()));

        let mut mounts = spec.mounts().clone().unwrap_or_default();
        if crate::userns::inside() {
            // In img's own user namespace the network namespace (the host's) is not ours, and
            // the kernel refuses a new sysfs there: bind the host's /sys read-only instead, as
            // rootless runc and podman do; cgroupfs goes for the same reason.
            mounts.retain(|m| !m.destination().starts_with("/sys/fs/cgroup"));
            for m in mounts.iter_mut() {
                if m.destination() == Path::new("/sys") {
                    *m = MountBuilder::default()
                        .destination("/sys")
                        .typ("none")
                        .source("/sys")
                        .options(vec![
                            "rbind".into(),
                            "nosuid".into(),
                            "noexec".into(),
                            "nodev".into(),
                            "ro".into(),
                        ])
                        .build()
                        .map_err(err)?;
                }
            }
        }
        // The generated files are bind-mounted read-only, as BuildKit does; a RUN step that
        // writes /etc/hosts gets EROFS rather than a change that silently vanishes.
        for (dest, src) in [
            ("/etc/hosts", bundle.join("hosts")),
            ("/etc/resolv.conf", bundle.join("resolv.conf")),
        ] {
            mounts.push(
                MountBuilder::default()
                    .destination(dest)
                    .typ("bind")
                    .source(src)
                    .options(vec!["rbind".into(), "ro".into()])
                    .build()
                    .map_err(err)?,
            );
        }
        for (i, (dest, _, _)) in req.files.iter().enumerate() {
            mounts.push(
                MountBuilder::default()
                    .destination(dest)
                    .typ("bind")
                    .source(bundle.join(format!("file-{i}")))
                    .options(vec!["bind".into(), "ro".into()])
                    .build()
                    .map_err(err)?,
            );
        }
        spec.set_mounts(Some(mounts));

        if crate::userns::inside() {
            let gids = crate::userns::IdMap::own_gids()
                .map_err(|e| ExecError::Spec(format!("failed to read /proc/self/gid_map: {e}")))?;
            drop_unmapped_gids(&mut spec, &gids);
        }

        if let Some(linux) = spec.linux_mut() {
            let namespaces = linux.namespaces().clone().map(|ns| {
                ns.into_iter()
                    .filter(|n| n.typ() != LinuxNamespaceType::Network)
                    .collect()
            });
            linux.set_namespaces(namespaces);
        }
        Ok(spec)
    }

    fn write_bundle(&self, bundle: &Path, rootfs: &Path, req: &RunRequest) -> io::Result<()> {
        fs::create_dir_all(bundle)?;
        let hosts = format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{}\n",
            req.hostname
        );
        fs::write(bundle.join("hosts"), hosts)?;
        // The host's resolver configuration, minus loopback resolvers the container's own
        // 127.0.0.1 would not reach if it had its own network; with the host network they work,
        // so it is copied as it is.
        let resolv = fs::read("/etc/resolv.conf").unwrap_or_default();
        fs::write(bundle.join("resolv.conf"), resolv)?;
        for (i, (_, content, mode)) in req.files.iter().enumerate() {
            let path = bundle.join(format!("file-{i}"));
            fs::write(&path, content)?;
            fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(*mode))?;
        }
        let spec = self
            .spec(rootfs, req, bundle)
            .map_err(|e| io::Error::other(e.to_string()))?;
        spec.save(bundle.join("config.json"))
            .map_err(|e| io::Error::other(e.to_string()))
    }
}

impl Executor for RuncExecutor {
    fn run(&self, rootfs: &Path, req: &RunRequest, log: &mut dyn Write) -> Result<i32, ExecError> {
        let id = format!(
            "img-{}-{}",
            std::process::id(),
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let bundle = self.state.join("bundles").join(&id);
        let stubs = MountStubs::record(rootfs)?;
        self.write_bundle(&bundle, rootfs, req)
            .map_err(|source| ExecError::Bundle {
                path: bundle.clone(),
                source,
            })?;

        let result = run_runc(&self.runc, &self.state, &bundle, &id, log, &self.interrupt);
        // Whatever happened, the container is gone once `runc run` returns; clean up its
        // traces in the snapshot and the bundle before reporting.
        let cleaned = stubs.remove_created();
        let _ = fs::remove_dir_all(&bundle);
        let code = result?;
        cleaned?;
        Ok(code)
    }
}

fn run_runc(
    runc: &Path,
    state: &Path,
    bundle: &Path,
    id: &str,
    log: &mut dyn Write,
    interrupt: &Interrupt,
) -> Result<i32, ExecError> {
    let (reader, writer) = io::pipe().map_err(|source| ExecError::Spawn {
        runc: runc.to_owned(),
        source,
    })?;
    let writer2 = writer.try_clone().map_err(|source| ExecError::Spawn {
        runc: runc.to_owned(),
        source,
    })?;
    let mut child = Command::new(runc)
        .arg("--root")
        .arg(state)
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer2)
        .spawn()
        .map_err(|source| ExecError::Spawn {
            runc: runc.to_owned(),
            source,
        })?;
    // Our copies of the write end are gone with the Command, so EOF comes when the container's
    // last process exits. Until `runc run` has created the container there is nothing to kill,
    // and runc says so: the kill is tried again at the next look.
    let mut killed = false;
    copy_output(reader, log, &mut || {
        if !killed && interrupt.signal().is_some() {
            killed = runc_quietly(runc, state, &["kill", id, "KILL"]);
        }
    });
    let status = child.wait().map_err(|source| ExecError::Spawn {
        runc: runc.to_owned(),
        source,
    })?;
    // Whatever the step's own exit (a Ctrl-C to the process group reaches `runc run` too, which
    // passes it on to the container), an interrupted step fails the same way.
    if let Some(interrupted) = interrupt.signal() {
        runc_quietly(runc, state, &["delete", "--force", id]);
        return Err(ExecError::Interrupted(interrupted));
    }
    match status.code() {
        Some(code) => Ok(code),
        None => Err(ExecError::Killed),
    }
}

/// Copies the container's output to `log` as it arrives. A failing log (a closed terminal) must
/// not block the container, so the pipe is drained either way. `between` runs before each read
/// and at least every `INTERRUPT_POLL` (it looks at the interrupt flag).
fn copy_output(mut reader: io::PipeReader, log: &mut dyn Write, between: &mut dyn FnMut()) {
    let mut buf = [0u8; 16 * 1024];
    let mut log_ok = true;
    loop {
        between();
        if !readable(&reader, INTERRUPT_POLL) {
            continue;
        }
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if log_ok {
                    log_ok = log.write_all(&buf[..n]).and_then(|_| log.flush()).is_ok();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
}

/// Runs `runc --root STATE args...`, ignoring its output; whether it succeeded.
fn runc_quietly(runc: &Path, state: &Path, args: &[&str]) -> bool {
    Command::new(runc)
        .arg("--root")
        .arg(state)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Waits up to `timeout` for `reader` to have data or EOF; false on a timeout (or EINTR).
fn readable(reader: &io::PipeReader, timeout: Duration) -> bool {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: reader.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd that lives across the call, for a descriptor `reader` keeps open.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
    // An error other than EINTR (there is none for one valid descriptor) lets the read report it.
    n != 0 && !(n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted)
}

/// The pid of the img process that started container `id` (`img-PID-N`).
pub fn container_owner(id: &str) -> Option<u32> {
    let rest = id.strip_prefix("img-")?;
    let (pid, n) = rest.split_once('-')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Which mount points existed in the root file system before runc ran, so the ones it created
/// can be removed afterwards. Paths are resolved with `RESOLVE_IN_ROOT`: an image whose `/etc`
/// is a symlink to `/host/etc` must not make us touch the host.
struct MountStubs {
    root: OwnedFd,
    missing: Vec<&'static str>,
    /// The times of each stub's parent directory, to put back after removing the stub.
    parent_times: Vec<(&'static str, TimeSpec, TimeSpec)>,
}

impl MountStubs {
    fn record(rootfs: &Path) -> Result<MountStubs, ExecError> {
        let root = File::open(rootfs)
            .map_err(|source| ExecError::Rootfs {
                path: "/".into(),
                source,
            })?
            .into();
        let mut stubs = MountStubs {
            root,
            missing: Vec::new(),
            parent_times: Vec::new(),
        };
        for path in STUB_CANDIDATES {
            if stubs.lstat(path)?.is_none() {
                stubs.missing.push(path);
                let parent = parent_of(path);
                if !stubs.parent_times.iter().any(|(p, ..)| *p == parent)
                    && let Some(st) = stubs.lstat(parent)?
                {
                    stubs.parent_times.push((
                        parent,
                        TimeSpec::new(st.st_atime, st.st_atime_nsec),
                        TimeSpec::new(st.st_mtime, st.st_mtime_nsec),
                    ));
                }
            }
        }
        Ok(stubs)
    }

    /// Opens the parent of `path` inside the root and returns it with the last component.
    fn open_parent(&self, path: &'static str) -> io::Result<(OwnedFd, &'static str)> {
        let parent = parent_of(path);
        let name = path.rsplit('/').next().unwrap_or("");
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let rel = parent.trim_start_matches('/');
        let rel = if rel.is_empty() { "." } else { rel };
        let fd = openat2(self.root.as_fd(), rel, how).map_err(io::Error::from)?;
        Ok((fd, name))
    }

    fn lstat(&self, path: &'static str) -> Result<Option<libc::stat>, ExecError> {
        let err = |source: io::Error| ExecError::Rootfs {
            path: path.into(),
            source,
        };
        if path == "/" {
            return match nix::sys::stat::fstat(self.root.as_fd()) {
                Ok(st) => Ok(Some(st)),
                Err(e) => Err(err(e.into())),
            };
        }
        let (dir, name) = match self.open_parent(path) {
            Ok(v) => v,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Ok(None),
            Err(e) => return Err(err(e)),
        };
        match fstatat(dir.as_fd(), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(nix::errno::Errno::ENOENT) => Ok(None),
            Err(e) => Err(err(e.into())),
        }
    }

    /// Removes the stubs runc created (deepest first) if they are still empty, and restores
    /// their parents' times.
    fn remove_created(&self) -> Result<(), ExecError> {
        for path in self.missing.iter().rev() {
            let Some(st) = self.lstat(path)? else {
                continue;
            };
            let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
            let is_empty_file = st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_size == 0;
            if !is_dir && !is_empty_file {
                continue;
            }
            let (dir, name) = self.open_parent(path).map_err(|source| ExecError::Rootfs {
                path: path.to_string(),
                source,
            })?;
            let flag = if is_dir {
                UnlinkatFlags::RemoveDir
            } else {
                UnlinkatFlags::NoRemoveDir
            };
            match nix::unistd::unlinkat(dir.as_fd(), name, flag) {
                // A RUN step that put files into a new /etc keeps it.
                Ok(()) | Err(nix::errno::Errno::ENOTEMPTY) | Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => {
                    return Err(ExecError::Rootfs {
                        path: path.to_string(),
                        source: e.into(),
                    });
                }
            }
        }
        for (parent, atime, mtime) in &self.parent_times {
            // Like BuildKit, unconditionally: a step that also changed the directory loses its
            // new mtime, which is the lesser evil than every layer carrying `/` or `/etc`.
            let target = if *parent == "/" {
                None
            } else {
                Some(
                    self.open_parent(parent)
                        .map_err(|source| ExecError::Rootfs {
                            path: parent.to_string(),
                            source,
                        })?,
                )
            };
            let res = match &target {
                None => utimensat(
                    self.root.as_fd(),
                    ".",
                    atime,
                    mtime,
                    UtimensatFlags::NoFollowSymlink,
                ),
                Some((dir, name)) => utimensat(
                    dir.as_fd(),
                    OsStr::new(name),
                    atime,
                    mtime,
                    UtimensatFlags::NoFollowSymlink,
                ),
            };
            res.map_err(|e| ExecError::Rootfs {
                path: parent.to_string(),
                source: e.into(),
            })?;
        }
        Ok(())
    }
}

/// Takes out of `spec` the group ids a user namespace with map `gids` cannot set, which would
/// fail the whole step: supplementary groups from the image's /etc/group and the devpts
/// `gid=5` (tty) option. An ordinary user without subordinate ranges maps only their own id, so
/// only gid 0 is left. Rootless runc's own spec conversion (`runc spec --rootless`) drops every
/// `gid=` option for the same reason; here only unmapped ones go, so with subordinate ranges the
/// container is the one root gets. The step's primary gid stays: a USER whose group is not
/// mapped fails with runc's error, which is what the fallback warning announced.
fn drop_unmapped_gids(spec: &mut Spec, gids: &crate::userns::IdMap) {
    if let Some(user) = spec.process_mut().as_mut().map(|p| p.user_mut())
        && let Some(additional) = user.additional_gids().clone()
    {
        let kept: Vec<u32> = additional
            .into_iter()
            .filter(|g| gids.contains(*g))
            .collect();
        user.set_additional_gids(Some(kept));
    }
    if let Some(mounts) = spec.mounts_mut() {
        for m in mounts.iter_mut() {
            if let Some(options) = m.options().clone() {
                let kept = options
                    .into_iter()
                    .filter(|o| {
                        o.strip_prefix("gid=")
                            .and_then(|g| g.parse::<u32>().ok())
                            .is_none_or(|g| gids.contains(g))
                    })
                    .collect();
                m.set_options(Some(kept));
            }
        }
    }
}

fn parent_of(path: &'static str) -> &'static str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

#[cfg(test)]
mod tests;

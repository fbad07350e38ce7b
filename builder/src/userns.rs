//! Running img as an ordinary user: img re-executes itself as root of a new user namespace, with
//! the user's subordinate ids mapped by `newuidmap`/`newgidmap`, and in a mount namespace of its
//! own, where it may mount FUSE and overlayfs and run runc.
//!
//! The re-executed img unshares its user namespace first thing in `main` (`enter`) and waits on
//! a pipe until the parent has written its id maps; only then does it unshare the mount
//! namespace (which needs the capabilities the mapped root has) and go on as uid 0 inside.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::process::{Command, ExitStatus};

use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use thiserror::Error;

/// Set in the re-executed img: it runs inside the namespaces.
pub const INSIDE_ENV: &str = "IMG_USERNS";

#[derive(Debug, Error)]
pub enum UsernsError {
    #[error("failed to start img in a user namespace: {0}")]
    Spawn(io::Error),
    #[error("{program} failed for {user}: {message} (img doctor says what is missing)")]
    Map {
        program: &'static str,
        user: String,
        message: String,
    },
}

/// True when this process already runs inside img's user namespace.
pub fn inside() -> bool {
    std::env::var_os(INSIDE_ENV).is_some()
}

/// The ids a user namespace maps, as its own processes see them: `/proc/self/uid_map` or
/// `gid_map` read as (first id inside, count) ranges. Ids outside every range cannot own files
/// or be set as a process's ids in there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdMap(Vec<(u32, u32)>);

impl IdMap {
    /// This process's group id map.
    pub fn own_gids() -> io::Result<IdMap> {
        std::fs::read_to_string("/proc/self/gid_map").map(|t| IdMap::parse(&t))
    }

    /// Parses the kernel's format: "inside outside count" per line.
    pub fn parse(text: &str) -> IdMap {
        IdMap(
            text.lines()
                .filter_map(|l| {
                    let mut f = l.split_whitespace().map(|w| w.parse::<u32>().ok());
                    let (inside, _outside, count) = (f.next()??, f.next()??, f.next()??);
                    Some((inside, count))
                })
                .collect(),
        )
    }

    pub fn contains(&self, id: u32) -> bool {
        self.0.iter().any(|&(first, count)| {
            id >= first && u64::from(id) < u64::from(first) + u64::from(count)
        })
    }
}

/// A range of subordinate ids: start and count.
fn subordinate(file: &str, user: &str, id: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.trim().split(':');
        let (who, start, count) = (f.next()?, f.next()?, f.next()?);
        (who == user || who == id.to_string())
            .then(|| Some((start.parse().ok()?, count.parse().ok()?)))
            .flatten()
    })
}

/// The one line img prints when `user` lacks a subordinate range in one of the `files` (each
/// with the range found, if any): img then maps only the user's own id, and says once, not
/// once per map, what that costs.
fn fallback_warning(user: &str, files: &[(&str, Option<(u64, u64)>)]) -> Option<String> {
    let missing: Vec<&str> = files
        .iter()
        .filter(|(_, range)| range.is_none())
        .map(|(file, _)| *file)
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "warning: no {} range for {user}, so only your own id is mapped: RUN steps cannot \
             run as another user or chown files to one (img doctor says how to add ranges)",
            missing.join(" or ")
        )
    })
}

/// The environment variable that hands the child its two pipe ends ("READ,WRITE").
const PIPES_ENV: &str = "IMG_USERNS_PIPES";

/// Re-runs this img, with the same arguments, as root of a new user namespace; returns its exit
/// status. `extra_env` is set in the child (the caller passes the user's state dir, which the
/// child, as uid 0, would otherwise take to be /var/lib/img).
///
/// The child unshares its user namespace first thing (`enter`), says so on a pipe, and waits
/// on another until the parent has run `newuidmap`/`newgidmap` for it. (Unsharing in
/// `pre_exec` instead would deadlock: `spawn` waits for the exec.)
pub fn reexec(extra_env: &[(&str, OsString)]) -> Result<ExitStatus, UsernsError> {
    use std::os::fd::AsRawFd;
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string());
    let spawn_err = |e: nix::errno::Errno| UsernsError::Spawn(e.into());
    // Without O_CLOEXEC: the child inherits its ends across exec.
    let (to_child_r, to_child_w) = nix::unistd::pipe2(OFlag::empty()).map_err(spawn_err)?;
    let (from_child_r, from_child_w) = nix::unistd::pipe2(OFlag::empty()).map_err(spawn_err)?;
    let mut cmd = Command::new("/proc/self/exe");
    cmd.args(std::env::args_os().skip(1))
        .env(INSIDE_ENV, "1")
        .env(
            PIPES_ENV,
            format!("{},{}", to_child_r.as_raw_fd(), from_child_w.as_raw_fd()),
        );
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().map_err(UsernsError::Spawn)?;
    drop(to_child_r);
    drop(from_child_w);
    let mut from_child = std::fs::File::from(from_child_r);
    let mut to_child = std::fs::File::from(to_child_w);
    let mut byte = [0u8; 1];
    if from_child.read(&mut byte).map_err(UsernsError::Spawn)? != 1 {
        // The child failed before unsharing; its own error message says why.
        return child.wait().map_err(UsernsError::Spawn);
    }
    let pid = child.id().to_string();
    let ranges = [
        ("newuidmap", "/etc/subuid", uid),
        ("newgidmap", "/etc/subgid", gid),
    ]
    .map(|(program, file, id)| (program, file, id, subordinate(file, &user, uid)));
    if let Some(line) = fallback_warning(&user, &ranges.map(|(_, file, _, r)| (file, r))) {
        eprintln!("{line}");
    }
    let mapped = (|| {
        for (program, _, id, range) in &ranges {
            let mut args = vec![pid.clone(), "0".into(), id.to_string(), "1".into()];
            if let Some((start, count)) = range {
                args.extend(["1".into(), start.to_string(), count.to_string()]);
            }
            let out = Command::new(program)
                .args(&args)
                .output()
                .map_err(|e| UsernsError::Map {
                    program,
                    user: user.clone(),
                    message: e.to_string(),
                })?;
            if !out.status.success() {
                return Err(UsernsError::Map {
                    program,
                    user: user.clone(),
                    message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                });
            }
        }
        Ok(())
    })();
    if let Err(e) = mapped {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    to_child.write_all(&[1]).map_err(UsernsError::Spawn)?;
    drop(to_child);
    forward_signals(child.id());
    child.wait().map_err(UsernsError::Spawn)
}

/// Passes SIGINT, SIGTERM and SIGHUP on to the img inside the namespace, which handles them (an
/// interrupted build cleans up and exits 128 + the signal, which `wait` then returns): the
/// user's `kill` names this process. Best effort: without it the signal ends this process only.
fn forward_signals(child: u32) {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, pthread_sigmask};
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    if pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None).is_err() {
        return;
    }
    let pid = nix::unistd::Pid::from_raw(child as i32);
    let spawned = std::thread::Builder::new()
        .name("forward-signals".to_owned())
        .spawn(move || {
            while let Ok(sig) = set.wait() {
                let _ = kill(pid, sig);
            }
        });
    if spawned.is_err() {
        let _ = pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None);
    }
}

/// The child's side of `reexec`, first thing in `main`: unshare the user namespace, wait for
/// the parent to map it, then take a mount namespace of its own. Does nothing in a process that
/// `reexec` did not start.
pub fn enter() -> io::Result<()> {
    let Some(pipes) = std::env::var_os(PIPES_ENV) else {
        return Ok(());
    };
    // SAFETY: single-threaded at this point (first thing in main); nothing else reads it.
    unsafe { std::env::remove_var(PIPES_ENV) };
    let pipes = pipes.to_string_lossy().into_owned();
    let (r, w) = pipes
        .split_once(',')
        .and_then(|(r, w)| Some((r.parse::<i32>().ok()?, w.parse::<i32>().ok()?)))
        .ok_or_else(|| io::Error::other(format!("bad {PIPES_ENV}: {pipes}")))?;
    // SAFETY: the parent created these descriptors for us and nothing else in this process
    // owns them.
    let (mut to_us, mut to_parent) = unsafe {
        use std::os::fd::FromRawFd;
        (std::fs::File::from_raw_fd(r), std::fs::File::from_raw_fd(w))
    };
    nix::sched::unshare(CloneFlags::CLONE_NEWUSER).map_err(io::Error::from)?;
    to_parent.write_all(&[1])?;
    drop(to_parent);
    let mut byte = [0u8; 1];
    if to_us.read(&mut byte)? != 1 {
        return Err(io::Error::other("the parent could not map our user ids"));
    }
    nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(io::Error::from)?;
    // Mounts made in here stay in here.
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(io::Error::from)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_map_contains_the_ids_of_its_ranges_only() {
        let map =
            IdMap::parse("         0       1001          1\n         1     100000      65536\n");
        assert!(map.contains(0) && map.contains(1) && map.contains(65536));
        assert!(!map.contains(65537));
        let own = IdMap::parse("0 1002 1\n");
        assert!(own.contains(0) && !own.contains(5));
        assert!(IdMap::parse("0 0 4294967295\n").contains(u32::MAX - 1));
    }

    #[test]
    fn the_fallback_warning_is_one_line_naming_every_missing_file() {
        let both =
            fallback_warning("bob", &[("/etc/subuid", None), ("/etc/subgid", None)]).unwrap();
        assert_eq!(both.lines().count(), 1);
        assert!(
            both.starts_with("warning: no /etc/subuid or /etc/subgid range for bob"),
            "{both}"
        );
        assert!(both.contains("chown"), "{both}");
        let gid_only = fallback_warning(
            "bob",
            &[
                ("/etc/subuid", Some((100000, 65536))),
                ("/etc/subgid", None),
            ],
        )
        .unwrap();
        assert!(
            gid_only.starts_with("warning: no /etc/subgid range for bob"),
            "{gid_only}"
        );
        assert_eq!(
            fallback_warning(
                "bob",
                &[
                    ("/etc/subuid", Some((100000, 65536))),
                    ("/etc/subgid", Some((100000, 65536)))
                ],
            ),
            None
        );
    }
}

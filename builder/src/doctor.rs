//! `img doctor`: what a build as an ordinary user needs from the machine, checked one by one,
//! each missing piece with the command that fixes it.
//!
//! The checks read files and metadata, except one: whether the kernel mounts overlayfs in a user
//! namespace is only known by trying, so `overlay_in_userns` forks a child that does, in a
//! temporary directory it removes again. Nothing else is changed or started.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use thiserror::Error;

/// One finding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub what: String,
    /// `None` when it is fine; otherwise what is wrong and the command that fixes it.
    pub problem: Option<Problem>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub detail: String,
    pub fix: String,
}

/// The machine as the checks see it; `Host::real` reads this machine.
pub struct Host {
    pub root: PathBuf,
    pub uid: u32,
    pub user: String,
    pub path: Vec<PathBuf>,
    /// Where the overlayfs probe makes its temporary directory (the file system img keeps its
    /// state on), or `None` not to run the probe: a host under a fake `root` is not this
    /// machine's kernel.
    pub probe_dir: Option<PathBuf>,
}

impl Host {
    /// This machine as the current user sees it; the overlayfs probe runs in `state_dir`, or
    /// its nearest existing ancestor.
    pub fn real(state_dir: &Path) -> Host {
        let uid = nix::unistd::Uid::effective();
        let user = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| uid.to_string());
        let path = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        Host {
            root: PathBuf::from("/"),
            uid: uid.as_raw(),
            user,
            path,
            probe_dir: state_dir
                .ancestors()
                .find(|d| d.is_dir())
                .map(Path::to_owned),
        }
    }

    fn file(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    fn find_program(&self, name: &str) -> Option<PathBuf> {
        self.path
            .iter()
            .map(|d| d.join(name))
            .find(|p| p.is_file())
            .or_else(|| {
                ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
                    .iter()
                    .map(|d| self.file(d).join(name))
                    .find(|p| p.is_file())
            })
    }
}

fn ok(what: &str) -> Check {
    Check {
        what: what.to_owned(),
        problem: None,
    }
}

fn bad(what: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        what: what.to_owned(),
        problem: Some(Problem {
            detail: detail.into(),
            fix: fix.into(),
        }),
    }
}

/// Every check, in the order a user should fix them.
pub fn checks(host: &Host) -> Vec<Check> {
    let mut out = Vec::new();
    for (program, package, why) in [
        ("runc", "runc", "runs RUN steps"),
        ("fusermount3", "fuse3", "mounts imgfs without privileges"),
        ("newuidmap", "uidmap", "maps subordinate user ids"),
        ("newgidmap", "uidmap", "maps subordinate group ids"),
    ] {
        let what = format!("{program} ({why})");
        out.push(match host.find_program(program) {
            None => bad(
                &what,
                "not installed",
                format!("sudo apt-get install {package}"),
            ),
            Some(p) if program.starts_with("new") && host.uid != 0 => {
                let setuid = fs::metadata(&p)
                    .map(|m| m.permissions().mode() & 0o4000 != 0 && m.uid() == 0)
                    .unwrap_or(false);
                let caps = xattr_present(&p, "security.capability");
                if setuid || caps {
                    ok(&what)
                } else {
                    bad(
                        &what,
                        format!(
                            "{} is neither setuid root nor has file capabilities",
                            p.display()
                        ),
                        format!("sudo chmod u+s {}", p.display()),
                    )
                }
            }
            Some(_) => ok(&what),
        });
    }

    let fuse = host.file("/dev/fuse");
    let what = "/dev/fuse usable by this user";
    out.push(match fs::metadata(&fuse) {
        Err(_) => bad(what, "/dev/fuse does not exist", "sudo modprobe fuse"),
        Ok(m) if host.uid != 0 && m.permissions().mode() & 0o006 != 0o006 => bad(
            what,
            format!("/dev/fuse has mode {:o}", m.permissions().mode() & 0o777),
            "sudo chmod 0666 /dev/fuse   (Debian's udev rule sets 0666 at boot; a container may not)",
        ),
        Ok(_) => ok(what),
    });

    if host.uid != 0 {
        for (file, flag) in [
            ("/etc/subuid", "--add-subuids"),
            ("/etc/subgid", "--add-subgids"),
        ] {
            let what = format!("{file} range for {}", host.user);
            let count = subordinate_ids(&host.file(file), &host.user, host.uid);
            out.push(if count >= 65536 {
                ok(&what)
            } else {
                bad(
                    &what,
                    format!("{count} subordinate ids (65536 needed for images with system users)"),
                    format!("sudo usermod {flag} 100000-165535 {}", host.user),
                )
            });
        }
    }

    let what = "user namespaces for ordinary users";
    let read = |f: &str| {
        fs::read_to_string(host.file(f))
            .ok()
            .map(|s| s.trim().to_owned())
    };
    out.push(
        match (
            read("/proc/sys/user/max_user_namespaces"),
            read("/proc/sys/kernel/unprivileged_userns_clone"),
            read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns"),
        ) {
            (Some(max), _, _) if max == "0" => bad(
                what,
                "user.max_user_namespaces is 0",
                "sudo sysctl -w user.max_user_namespaces=28633",
            ),
            (_, Some(clone), _) if clone == "0" => bad(
                what,
                "kernel.unprivileged_userns_clone is 0",
                "sudo sysctl -w kernel.unprivileged_userns_clone=1",
            ),
            (_, _, Some(aa)) if aa == "1" => bad(
                what,
                "AppArmor restricts unprivileged user namespaces",
                "sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0",
            ),
            _ => ok(what),
        },
    );

    if let Some(dir) = &host.probe_dir {
        let what = "kernel overlayfs in a user namespace (--backend overlayfs, and fast RUN steps on fuse)";
        out.push(match overlay_in_userns(dir) {
            Ok(()) => ok(what),
            Err(e @ ProbeError::Scratch { .. }) => bad(
                what,
                format!("not tried: {e}"),
                format!(
                    "img keeps its state there: sudo chown {} {}, or choose another with -s",
                    host.user,
                    dir.display()
                ),
            ),
            Err(e) => {
                let release = read("/proc/sys/kernel/osrelease").unwrap_or_default();
                let permit = host
                    .file("/sys/module/overlay/parameters/permit_mounts_in_userns")
                    .exists();
                bad(what, e.to_string(), overlay_fix(&release, permit))
            }
        });
    }
    out
}

/// What to do when overlayfs cannot be mounted in a user namespace, given the kernel release
/// and whether the overlay module has Ubuntu's `permit_mounts_in_userns` parameter. Upstream
/// kernels allow it from 5.11 (with `userxattr`); Ubuntu's allowed it earlier behind that
/// parameter. Either way the FUSE backend needs none of this.
fn overlay_fix(release: &str, permit_parameter: bool) -> String {
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    if version >= (5, 11) {
        "none known (the kernel should allow it); build with --backend fuse".to_owned()
    } else if permit_parameter {
        "echo Y | sudo tee /sys/module/overlay/parameters/permit_mounts_in_userns   \
         (or build with --backend fuse)"
            .to_owned()
    } else {
        format!("a kernel >= 5.11 (this is {release}); until then build with --backend fuse")
    }
}

#[derive(Debug, Error)]
pub enum ProbeError {
    #[error("failed to make the probe's directories in {path}: {source}")]
    Scratch { path: PathBuf, source: io::Error },
    #[error("failed to fork the probe: {0}")]
    Fork(Errno),
    #[error("{step} failed: {errno}")]
    Step { step: &'static str, errno: Errno },
    #[error("the probe ended without saying why: {0}")]
    Died(String),
}

/// The probe's steps, in order; the child reports the index of the one that failed.
const PROBE_STEPS: [&str; 5] = [
    "unshare(CLONE_NEWUSER|CLONE_NEWNS)",
    "writing /proc/self/setgroups",
    "writing /proc/self/uid_map",
    "writing /proc/self/gid_map",
    "mounting overlayfs with userxattr",
];

/// Mounts overlayfs with `userxattr` (lower, upper and work directories in a temporary
/// directory under `dir`) in a child that unshares a user and a mount namespace mapping only
/// its own ids, as an ordinary user's img does (see `userns`). The mount goes with the child.
///
/// The child is forked, not spawned: unsharing a user namespace needs a single-threaded process
/// and the doctor has no helper binary to exec. Since the caller may have threads (the test
/// harness does), the child only makes system calls on buffers prepared before the fork.
pub fn overlay_in_userns(dir: &Path) -> Result<(), ProbeError> {
    let scratch_err = |source| ProbeError::Scratch {
        path: dir.to_owned(),
        source,
    };
    let tmp = tempfile::Builder::new()
        .prefix(".img-doctor-")
        .tempdir_in(dir)
        .map_err(scratch_err)?;
    for d in ["lower", "upper", "work", "merged"] {
        fs::create_dir(tmp.path().join(d)).map_err(scratch_err)?;
    }
    let c = |s: &[u8]| CString::new(s).expect("no NUL in paths made here");
    let p = |d: &str| tmp.path().join(d);
    let options = c(format!(
        "lowerdir={},upperdir={},workdir={},userxattr",
        p("lower").display(),
        p("upper").display(),
        p("work").display()
    )
    .as_bytes());
    let merged = c(p("merged").as_os_str().as_bytes());
    let overlay = c(b"overlay");
    let files = [
        (c(b"/proc/self/setgroups"), b"deny".to_vec()),
        (
            c(b"/proc/self/uid_map"),
            format!("0 {} 1", nix::unistd::geteuid()).into_bytes(),
        ),
        (
            c(b"/proc/self/gid_map"),
            format!("0 {} 1", nix::unistd::getegid()).into_bytes(),
        ),
    ];
    let (report_r, report_w) = nix::unistd::pipe().map_err(ProbeError::Fork)?;

    // SAFETY: the child calls only async-signal-safe functions (raw system calls on memory
    // allocated before the fork) and leaves through _exit.
    match unsafe { nix::unistd::fork() }.map_err(ProbeError::Fork)? {
        nix::unistd::ForkResult::Child => {
            use std::os::fd::AsRawFd;
            let report = report_w.as_raw_fd();
            fn fail(report: i32, step: u8) -> ! {
                // SAFETY: plain system calls on a descriptor we own and a stack buffer.
                unsafe {
                    let message = [step, *libc::__errno_location() as u8];
                    libc::write(report, message.as_ptr().cast(), 2);
                    libc::_exit(1)
                }
            }
            // SAFETY: as above; every pointer is into a CString or Vec made before the fork.
            unsafe {
                if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) != 0 {
                    fail(report, 0);
                }
                for (i, (path, content)) in files.iter().enumerate() {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY);
                    if fd < 0
                        || libc::write(fd, content.as_ptr().cast(), content.len())
                            != content.len() as isize
                    {
                        fail(report, 1 + i as u8);
                    }
                    libc::close(fd);
                }
                if libc::mount(
                    overlay.as_ptr(),
                    merged.as_ptr(),
                    overlay.as_ptr(),
                    0,
                    options.as_ptr().cast(),
                ) != 0
                {
                    fail(report, 4);
                }
                libc::_exit(0)
            }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(report_w);
            let status = nix::sys::wait::waitpid(child, None).map_err(ProbeError::Fork)?;
            let mut report = [0u8; 2];
            let n = nix::unistd::read(&report_r, &mut report).unwrap_or(0);
            match (status, n) {
                (nix::sys::wait::WaitStatus::Exited(_, 0), _) => Ok(()),
                (_, 2) => Err(ProbeError::Step {
                    step: PROBE_STEPS[usize::from(report[0]).min(PROBE_STEPS.len() - 1)],
                    errno: Errno::from_raw(i32::from(report[1])),
                }),
                (status, _) => Err(ProbeError::Died(format!("{status:?}"))),
            }
        }
    }
}

fn xattr_present(path: &Path, name: &str) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let c_name = std::ffi::CString::new(name).expect("no NUL in a constant");
    // SAFETY: both strings are NUL-terminated; a null buffer with size 0 only asks the size.
    let n = unsafe { libc::getxattr(c_path.as_ptr(), c_name.as_ptr(), std::ptr::null_mut(), 0) };
    n > 0
}

/// How many subordinate ids `/etc/subuid`-style `file` grants `user` (by name or uid).
fn subordinate_ids(file: &Path, user: &str, uid: u32) -> u64 {
    let Ok(text) = fs::read_to_string(file) else {
        return 0;
    };
    text.lines()
        .filter_map(|l| {
            let mut f = l.trim().split(':');
            let (who, _start, count) = (f.next()?, f.next()?, f.next()?);
            (who == user || who == uid.to_string())
                .then(|| count.parse::<u64>().ok())
                .flatten()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(dir: &Path, uid: u32) -> Host {
        Host {
            root: dir.to_owned(),
            uid,
            user: "alice".into(),
            path: vec![dir.join("usr/bin")],
            probe_dir: None,
        }
    }

    fn write(dir: &Path, path: &str, content: &str, mode: u32) {
        let p = dir.join(path.trim_start_matches('/'));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, content).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn problems(checks: &[Check]) -> Vec<String> {
        checks
            .iter()
            .filter_map(|c| c.problem.as_ref().map(|p| p.fix.clone()))
            .collect()
    }

    #[test]
    fn a_bare_machine_gets_a_fix_for_each_missing_piece() {
        let dir = tempfile::tempdir().unwrap();
        let fixes = problems(&checks(&host(dir.path(), 1000)));
        for expected in [
            "sudo apt-get install runc",
            "sudo apt-get install fuse3",
            "sudo apt-get install uidmap",
            "sudo modprobe fuse",
            "sudo usermod --add-subuids 100000-165535 alice",
            "sudo usermod --add-subgids 100000-165535 alice",
        ] {
            assert!(
                fixes.iter().any(|f| f == expected),
                "{expected} in {fixes:?}"
            );
        }
    }

    #[test]
    fn a_ready_machine_has_no_problems() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for p in ["runc", "fusermount3", "newuidmap", "newgidmap"] {
            write(d, &format!("usr/bin/{p}"), "", 0o755);
        }
        // The test runs as root, so the setuid check sees root-owned binaries.
        for p in ["newuidmap", "newgidmap"] {
            write(d, &format!("usr/bin/{p}"), "", 0o4755);
        }
        write(d, "dev/fuse", "", 0o666);
        write(
            d,
            "etc/subuid",
            "bob:200000:65536\nalice:100000:65536\n",
            0o644,
        );
        write(d, "etc/subgid", "1000:100000:65536\n", 0o644);
        write(d, "proc/sys/user/max_user_namespaces", "63000\n", 0o644);
        let checks = checks(&host(d, 1000));
        if nix::unistd::Uid::effective().is_root() {
            assert_eq!(problems(&checks), Vec::<String>::new());
        }
    }

    #[test]
    fn the_overlay_fix_depends_on_the_kernel() {
        assert!(overlay_fix("5.4.0-150-generic", true).starts_with("echo Y | sudo tee "));
        let old = overlay_fix("5.10.0-28-amd64", false);
        assert!(
            old.starts_with("a kernel >= 5.11 (this is 5.10.0-28-amd64)"),
            "{old}"
        );
        for fix in [
            overlay_fix("5.4.0-150-generic", true),
            old,
            overlay_fix("6.18.44", false),
        ] {
            assert!(fix.contains("--backend fuse"), "{fix}");
        }
    }

    /// This machine's kernel (5.11 or later) mounts overlayfs in a user namespace; root's
    /// probe maps only uid 0, as an ordinary user's maps only their own id.
    #[test]
    fn the_overlay_probe_mounts_on_a_kernel_that_allows_it() {
        let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        if overlay_fix(&release, false).starts_with("a kernel >= 5.11") {
            eprintln!("skipping: kernel {release} predates overlayfs in user namespaces");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        overlay_in_userns(dir.path()).unwrap();
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "probe cleaned up"
        );
        let missing = overlay_in_userns(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(missing, ProbeError::Scratch { .. }), "{missing}");
    }

    #[test]
    fn a_private_dev_fuse_and_disabled_user_namespaces_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "dev/fuse", "", 0o600);
        write(d, "proc/sys/kernel/unprivileged_userns_clone", "0\n", 0o644);
        let fixes = problems(&checks(&host(d, 1000)));
        assert!(
            fixes
                .iter()
                .any(|f| f.starts_with("sudo chmod 0666 /dev/fuse")),
            "{fixes:?}"
        );
        assert!(
            fixes.contains(&"sudo sysctl -w kernel.unprivileged_userns_clone=1".to_owned()),
            "{fixes:?}"
        );
    }
}

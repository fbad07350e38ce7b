//! `img doctor`: what a build as an ordinary user needs from the machine, checked one by one,
//! each missing piece with the command that fixes it.
//!
//! The checks read files and metadata only; they change nothing and start nothing.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

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

/// The machine as the checks see it; `Host::real()` reads this machine.
pub struct Host {
    pub root: PathBuf,
    pub uid: u32,
    pub user: String,
    pub path: Vec<PathBuf>,
}

impl Host {
    pub fn real() -> Host {
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
    out
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

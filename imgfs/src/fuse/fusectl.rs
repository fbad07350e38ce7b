//! Ending a mount whose server is gone, without waiting on it: the mount is found in
//! /proc/self/mountinfo (stat(2) of a FUSE mount point asks its server, and one that never
//! answers keeps the caller waiting for good), its FUSE connection is aborted through fusectl
//! (`/sys/fs/fuse/connections/ID/abort`: the kernel fails every pending and later request with
//! ENOTCONN), and it is detached (`umount2(MNT_DETACH)`).
//!
//! A server that died lost its /dev/fuse descriptor and the kernel ended the connection
//! already, unless another process inherited the descriptor; a server that is alive but no
//! longer reads (a thread that died, a stopped process) never ends it. Aborting covers both.

use std::io;
use std::path::Path;

/// A mount as /proc/self/mountinfo lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// The device number (major, minor) of its superblock.
    pub device: (u32, u32),
    /// `fuse.imgfs`, `overlay`, ...
    pub fstype: String,
    /// The mount's source: `imgfs:PID` for imgfs, whose PID served it.
    pub source: String,
}

impl MountEntry {
    pub fn is_fuse(&self) -> bool {
        self.fstype == "fuse" || self.fstype.starts_with("fuse.")
    }

    /// The name fusectl gives the connection of this mount (a directory under
    /// /sys/fs/fuse/connections): the kernel's encoding of the device number, MKDEV(major, minor).
    pub fn connection_id(&self) -> u32 {
        let (major, minor) = self.device;
        (major << 20) | minor
    }
}

/// The mount visible at `mount_point` (absolute, without symlinks) in this process's mount
/// namespace, from /proc/self/mountinfo; `None` if nothing is mounted there.
pub fn find(mount_point: &Path) -> io::Result<Option<MountEntry>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(find_in(&info, mount_point))
}

/// `find` over the text of a mountinfo file. The last mount listed on a path is the visible one.
fn find_in(info: &str, mount_point: &Path) -> Option<MountEntry> {
    let want = mount_point.as_os_str().as_encoded_bytes();
    info.lines()
        .filter_map(|line| {
            // id parent major:minor root mount-point options [optional...] - fstype source super
            let f: Vec<&str> = line.split(' ').collect();
            if unescape(f.get(4)?) != want {
                return None;
            }
            let sep = f.iter().position(|x| *x == "-")?;
            let (major, minor) = f.get(2)?.split_once(':')?;
            Some(MountEntry {
                device: (major.parse().ok()?, minor.parse().ok()?),
                fstype: f.get(sep + 1)?.to_string(),
                source: String::from_utf8_lossy(&unescape(f.get(sep + 2)?)).into_owned(),
            })
        })
        .next_back()
}

/// mountinfo's octal escapes (`\040` for a space) undone.
fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push(
                    d.iter()
                        .fold(0u8, |acc, c| acc.wrapping_mul(8).wrapping_add(c - b'0')),
                );
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

/// Where fusectl is mounted.
const CONNECTIONS: &str = "/sys/fs/fuse/connections";

/// Aborts the FUSE connection of `mount`, the mount at `mount_point`: whoever waits on it, or
/// asks it later, gets ENOTCONN. A connection that is already gone is not an error. Through
/// fusectl where it is mounted; where it is not (a host without systemd, which mounts it), by a
/// forced unmount, which aborts a FUSE connection first thing (the kernel's
/// `fuse_umount_begin`), whether the unmount then succeeds or finds the mount busy. Either
/// needs root of the initial user namespace.
pub fn abort(mount_point: &Path, mount: &MountEntry) -> io::Result<()> {
    let path = format!("{CONNECTIONS}/{}/abort", mount.connection_id());
    let fusectl = match std::fs::write(&path, b"1") {
        Ok(()) => return Ok(()),
        // The connection ended with its last /dev/fuse descriptor: nothing waits on it.
        Err(e) if e.kind() == io::ErrorKind::NotFound && fusectl_mounted() => return Ok(()),
        Err(e) => e,
    };
    match nix::mount::umount2(mount_point, nix::mount::MntFlags::MNT_FORCE) {
        Ok(()) | Err(nix::errno::Errno::EBUSY) => Ok(()),
        Err(e) => Err(io::Error::new(
            io::Error::from(e).kind(),
            format!(
                "{path}: {fusectl}; forced unmount of {}: {e}",
                mount_point.display()
            ),
        )),
    }
}

/// Whether fusectl is mounted where `abort` looks for it.
fn fusectl_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|info| {
        find_in(&info, Path::new(CONNECTIONS)).is_some_and(|m| m.fstype == "fusectl")
    })
}

/// Ends the mount at `mount_point` without asking its server anything: aborts its FUSE
/// connection (if it is a FUSE mount; a failed abort is logged and the mount detached anyway)
/// and detaches it, so it is gone from the tree now and ends when the last file in it is
/// closed. Returns the mount that was there, or `None` if there was none.
pub fn end_mount(mount_point: &Path) -> io::Result<Option<MountEntry>> {
    let Some(mount) = find(mount_point)? else {
        return Ok(None);
    };
    if mount.is_fuse()
        && let Err(e) = abort(mount_point, &mount)
    {
        tracing::warn!(
            mount_point = %mount_point.display(),
            "cannot abort the FUSE connection of a mount whose server is gone: {e}"
        );
    }
    match nix::mount::umount2(mount_point, nix::mount::MntFlags::MNT_DETACH) {
        // EINVAL: the forced unmount or someone else unmounted it meanwhile.
        Ok(()) | Err(nix::errno::Errno::EINVAL) => Ok(Some(mount)),
        Err(e) => Err(io::Error::new(
            io::Error::from(e).kind(),
            format!("cannot detach {}: {e}", mount_point.display()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
46 22 0:41 / /var/tmp/a\\040b rw,relatime shared:30 - fuse.imgfs imgfs:4242 rw,user_id=0
47 22 0:52 / /var/tmp/o rw - overlay overlay rw,lowerdir=/l
48 46 0:53 / /var/tmp/a\\040b rw,relatime - fuse.imgfs imgfs:4343 rw,user_id=0
";

    #[test]
    fn the_visible_mount_on_a_path_is_the_last_one_listed() {
        let m = find_in(INFO, Path::new("/var/tmp/a b")).unwrap();
        assert_eq!(m.device, (0, 53));
        assert_eq!(m.fstype, "fuse.imgfs");
        assert_eq!(m.source, "imgfs:4343");
        assert!(m.is_fuse());
        let o = find_in(INFO, Path::new("/var/tmp/o")).unwrap();
        assert!(!o.is_fuse());
        assert_eq!(find_in(INFO, Path::new("/var/tmp")), None);
    }

    #[test]
    fn a_connection_is_named_by_the_kernels_device_encoding() {
        let mut m = find_in(INFO, Path::new("/var/tmp/o")).unwrap();
        assert_eq!(m.connection_id(), 52);
        m.device = (1, 2);
        assert_eq!(m.connection_id(), (1 << 20) | 2);
    }
}

//! Conversions between imgfs's types and fuser's: attributes, times, file types, names, and
//! `errno`, the one place that decides which errno a library error becomes.

use super::*;

/// Turns a library error into the errno the kernel gets, logging the ones that mean trouble.
/// The one place that decides how errors reach FUSE.
pub(super) fn errno(op: &str, e: &Error) -> Errno {
    match e {
        Error::Io { .. } | Error::Corrupt(_) | Error::Db(_) => {
            tracing::error!(op, error = %e, "request failed");
        }
        _ => tracing::debug!(op, error = %e, "request refused"),
    }
    Errno::from_i32(e.errno())
}

pub(super) fn system_time(t: Timestamp) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs()) + Duration::from_nanos(t.nsec as u64)
    }
}

pub(super) fn timestamp(t: SystemTime) -> Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timestamp {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            let mut sec = -(d.as_secs() as i64);
            let mut nsec = d.subsec_nanos();
            if nsec > 0 {
                sec -= 1;
                nsec = 1_000_000_000 - nsec;
            }
            Timestamp { sec, nsec }
        }
    }
}

pub(super) fn file_type(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::CharDev => FileType::CharDevice,
        FileKind::BlockDev => FileType::BlockDevice,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
    }
}

pub(super) fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino.0),
        size: a.size,
        blocks: a.blocks,
        atime: system_time(a.atime),
        mtime: system_time(a.mtime),
        ctime: system_time(a.ctime),
        crtime: system_time(a.ctime),
        kind: file_type(a.kind),
        perm: a.perm as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev as u32,
        blksize: 4096,
        flags: 0,
    }
}

/// What a negative lookup replies: an entry with inode 0 makes the kernel cache the miss.
pub(super) fn negative_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

pub(super) fn ino(i: INodeNo) -> Ino {
    Ino(i.0)
}

pub(super) fn name(n: &OsStr) -> &[u8] {
    n.as_bytes()
}

pub(super) fn time_or_now(t: Option<TimeOrNow>) -> Option<Timestamp> {
    t.map(|t| match t {
        TimeOrNow::SpecificTime(t) => timestamp(t),
        TimeOrNow::Now => Timestamp::now(),
    })
}

/// Answers STATFS with the figures of the file system that holds the store.
pub(super) fn reply_statfs(root: &Path, reply: ReplyStatfs) {
    match nix::sys::statvfs::statvfs(root) {
        Ok(s) => reply.statfs(
            s.blocks(),
            s.blocks_free(),
            s.blocks_available(),
            s.files(),
            s.files_free(),
            s.fragment_size() as u32,
            255,
            s.fragment_size() as u32,
        ),
        Err(e) => reply.error(Errno::from_i32(e as i32)),
    }
}

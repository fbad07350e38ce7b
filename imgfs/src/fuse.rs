//! The FUSE adapter, the only module that imports fuser: serves one snapshot's `Tree`.
//!
//! Every handler runs its body through `serve`, which turns a library error into an errno in one
//! place (`errno`) and a panic into EIO plus a log line, so no request can take the mount down.
//! imgfs is the only writer of the trees it serves, so the kernel may cache entries, attributes,
//! directory listings and file pages for as long as it likes (`TTL`); every change made through the
//! mount invalidates what it must by the kernel's own bookkeeping.

mod convert;
pub mod fusectl;
mod governor;
mod mount;
mod overlaid;
mod snapshotter;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackingId, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, MountOption, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    SessionACL, TimeOrNow, WriteFlags,
};

use crate::error::Error;
use crate::ids::Ino;
use crate::records::{FileKind, Timestamp};
use crate::tree::{Attr, DirEntry, NewNode, RenameMode, SetAttr, Tree};

use convert::*;
pub use mount::{MountOptions, POLL_BEFORE_READ, RequestStats, can_passthrough, mount, session};
pub use snapshotter::{FuseMount, FuseSnapshotter};

/// How long the kernel may trust what we told it. imgfs is the only writer of a tree, so "forever".
const TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// A snapshot served over FUSE.
pub struct FuseFs {
    tree: Arc<Tree>,
    next_fh: AtomicU64,
    /// Open directories: the listing taken at opendir, so offsets stay valid while it changes.
    dirs: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
    stats: Option<Arc<RequestStats>>,
    /// Whether a file opened by CREATE gets direct I/O: only when the kernel lets direct-I/O
    /// files be mapped shared (FUSE_DIRECT_IO_ALLOW_MMAP, Linux 6.6), else linkers that mmap
    /// their output would fail with ENODEV.
    direct_io_on_create: bool,
    /// Whether to ask for FUSE passthrough at INIT (`MountOptions::passthrough` and
    /// `can_passthrough`), and whether the kernel granted it.
    passthrough_wanted: bool,
    passthrough: bool,
    /// Set when the kernel refused a backing file: every later open is served through imgfs.
    passthrough_failed: std::sync::atomic::AtomicBool,
    /// The open descriptors of each regular file opened while passthrough is on.
    opens: Mutex<HashMap<Ino, Opens>>,
    /// `MountOptions::volatile`: fsync and fsyncdir do nothing.
    volatile: bool,
}

/// How a file was opened: the file handle the kernel hands back in RELEASE.
const FH_PASSTHROUGH: u64 = 1;
const FH_CACHED: u64 = 2;

/// The open descriptors of one file. While a file has passthrough descriptors the kernel fails
/// (EIO) any open of it that is not passed through to the same backing file, and it opens the
/// backing file with the caller's flags: a descriptor open for writing would write into the pack.
/// So a file is passed through only while it has no cached descriptor, and while it has
/// passthrough descriptors it cannot be opened for writing or truncated (ETXTBSY, as for a
/// running executable). Its content therefore cannot change while the kernel reads the pack.
#[derive(Default)]
struct Opens {
    passthrough: u32,
    cached: u32,
    /// The pack registered with the kernel for this file's passthrough descriptors (all of a
    /// file's descriptors must share one); closed when the last of them is released.
    backing: Option<Arc<BackingId>>,
}

/// A reply that can carry an errno: every fuser reply type, so `serve` can answer errors itself.
trait ErrorReply {
    fn fail(self, e: Errno);
}

macro_rules! error_reply {
    ($($t:ty),*) => {$(
        impl ErrorReply for $t {
            fn fail(self, e: Errno) {
                self.error(e);
            }
        }
    )*};
}

error_reply!(
    ReplyEntry,
    ReplyAttr,
    ReplyData,
    ReplyEmpty,
    ReplyOpen,
    ReplyWrite,
    ReplyCreate,
    ReplyXattr,
    ReplyDirectory,
    ReplyDirectoryPlus,
    ReplyLseek
);

impl FuseFs {
    pub fn new(tree: Tree, stats: Option<Arc<RequestStats>>) -> FuseFs {
        FuseFs {
            tree: Arc::new(tree),
            next_fh: AtomicU64::new(1),
            dirs: Mutex::new(HashMap::new()),
            stats,
            direct_io_on_create: false,
            passthrough_wanted: false,
            passthrough: false,
            passthrough_failed: std::sync::atomic::AtomicBool::new(false),
            opens: Mutex::new(HashMap::new()),
            volatile: false,
        }
    }

    /// The pack holding `i`'s whole content at its own offsets, opened, if `i` has one
    /// (`Inode::object`) and it is still exactly the file's size.
    fn object_file(&self, i: Ino) -> Result<Option<std::fs::File>, Error> {
        let inode = self.tree.inode(i)?;
        let Some(pack) = inode.object.filter(|_| inode.kind == FileKind::File) else {
            return Ok(None);
        };
        let file = self.tree.store().packs().open_file(pack)?;
        let len = file
            .metadata()
            .map_err(|e| Error::io(format!("stat pack {}", pack.0), e))?
            .len();
        Ok((len == inode.size).then_some(file))
    }

    /// Decides how `i` is opened (see `Opens`) and counts the descriptor. Returns the file
    /// handle, and the backing file for a passthrough open (registered through `reply`).
    fn open_file(
        &self,
        i: Ino,
        flags: OpenFlags,
        reply: &ReplyOpen,
    ) -> Result<(u64, Option<Arc<BackingId>>), Error> {
        let read_only = flags.0 & libc::O_ACCMODE == libc::O_RDONLY;
        let mut opens = self.opens.lock().expect("poisoned");
        let o = opens.entry(i).or_default();
        if read_only
            && o.backing.is_none()
            && o.cached == 0
            && !self.passthrough_failed.load(Ordering::Relaxed)
            && let Some(file) = self.object_file(i)?
        {
            match reply.open_backing(&file) {
                Ok(b) => o.backing = Some(Arc::new(b)),
                Err(e) => {
                    tracing::warn!(
                        "the kernel refused a passthrough backing file ({e}); reads go through imgfs from now on"
                    );
                    self.passthrough_failed.store(true, Ordering::Relaxed);
                }
            }
        }
        match &o.backing {
            Some(b) if read_only => {
                o.passthrough += 1;
                Ok((FH_PASSTHROUGH, Some(b.clone())))
            }
            // The kernel would open the pack itself with these flags for writing.
            Some(_) => Err(Error::Busy(format!("inode {i}"))),
            None => {
                o.cached += 1;
                Ok((FH_CACHED, None))
            }
        }
    }

    /// Refuses to change the size of a file open for passthrough reads (see `open_file`).
    fn check_not_passed_through(&self, i: Ino) -> Result<(), Error> {
        match self.opens.lock().expect("poisoned").get(&i) {
            Some(o) if o.passthrough > 0 => Err(Error::Busy(format!("inode {i}"))),
            _ => Ok(()),
        }
    }

    /// Forgets a descriptor `open_file` counted.
    fn release_file(&self, i: Ino, fh: u64) {
        let mut opens = self.opens.lock().expect("poisoned");
        let Some(o) = opens.get_mut(&i) else {
            return;
        };
        match fh {
            FH_PASSTHROUGH => {
                o.passthrough = o.passthrough.saturating_sub(1);
                if o.passthrough == 0 {
                    o.backing = None;
                }
            }
            FH_CACHED => o.cached = o.cached.saturating_sub(1),
            _ => {}
        }
        if o.passthrough == 0 && o.cached == 0 {
            opens.remove(&i);
        }
    }

    /// The owner and mode of a new inode in `parent`: the caller's ids, except that a setgid
    /// directory passes on its group (and, to subdirectories, its setgid bit), as ext4 does.
    fn new_node(
        &self,
        req: &Request,
        parent: Ino,
        kind: FileKind,
        mode: u32,
    ) -> Result<NewNode, Error> {
        let p = self.tree.getattr(parent)?;
        let mut perm = mode & 0o7777;
        let mut gid = req.gid();
        if p.perm & libc::S_ISGID != 0 {
            gid = p.gid;
            if kind == FileKind::Dir {
                perm |= libc::S_ISGID;
            }
        }
        Ok(NewNode::new(kind, perm, req.uid(), gid))
    }

    /// Runs `f`, adding its time to `op`'s in the request statistics when they are kept.
    fn timed<T>(&self, op: &'static str, f: impl FnOnce() -> T) -> T {
        let Some(stats) = &self.stats else {
            return f();
        };
        let start = Instant::now();
        let out = f();
        stats.record(op, start.elapsed());
        out
    }

    /// Runs a handler: `body` computes the answer from the tree, `send` replies with it. An error
    /// becomes its errno (`errno`) and a panic in `body` becomes EIO, so no request can take the
    /// mount down.
    fn serve<R: ErrorReply, T>(
        &self,
        op: &'static str,
        reply: R,
        body: impl FnOnce() -> Result<T, Error>,
        send: impl FnOnce(R, T),
    ) {
        match self.timed(op, || catch_unwind(AssertUnwindSafe(body))) {
            Ok(Ok(v)) => send(reply, v),
            Ok(Err(e)) => reply.fail(errno(op, &e)),
            Err(_) => {
                tracing::error!(op, "request handler panicked; replied EIO");
                reply.fail(Errno::EIO);
            }
        }
    }

    /// `serve` for replies filled piece by piece (directory listings): `fill` adds to the reply,
    /// which is sent once it succeeds.
    fn serve_mut<R: ErrorReply>(
        &self,
        op: &'static str,
        mut reply: R,
        fill: impl FnOnce(&mut R) -> Result<(), Error>,
        send: impl FnOnce(R),
    ) {
        match self.timed(op, || catch_unwind(AssertUnwindSafe(|| fill(&mut reply)))) {
            Ok(Ok(())) => send(reply),
            Ok(Err(e)) => reply.fail(errno(op, &e)),
            Err(_) => {
                tracing::error!(op, "request handler panicked; replied EIO");
                reply.fail(Errno::EIO);
            }
        }
    }

    fn entry_reply(&self, reply: ReplyEntry, attr: &Attr) {
        reply.entry(&TTL, &file_attr(attr), Generation(0));
    }

    /// The listing an open directory handle took at opendir.
    fn listing(&self, fh: FileHandle) -> Result<Arc<Vec<DirEntry>>, Error> {
        self.dirs
            .lock()
            .expect("poisoned")
            .get(&fh.0)
            .cloned()
            .ok_or_else(|| Error::Invalid("directory handle".into()))
    }

    fn open_flags(&self) -> FopenFlags {
        // Pages of a file stay valid across opens: every write to this tree comes through us.
        FopenFlags::FOPEN_KEEP_CACHE
    }

    /// A file being created is written, rarely read back through the same descriptor: direct
    /// I/O sends its writes from the caller's pages instead of copying them into the FUSE page
    /// cache first, and skips the GETXATTR of security.capability the VFS sends before every
    /// cached write. A 1 GiB `dd` took 1.2 s instead of 1.5-2.2 s, an untar 4.6 s instead of
    /// 5.8 s (docs/benchmarks.md). Later opens of the file are cached as usual (no OPEN is
    /// sent); the cost is that a file's first read after it was written comes from imgfs.
    fn create_flags(&self) -> FopenFlags {
        if self.direct_io_on_create {
            self.open_flags() | FopenFlags::FOPEN_DIRECT_IO
        } else {
            self.open_flags()
        }
    }
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let wanted = [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_ASYNC_DIO,
            // We clear setuid/setgid and capabilities ourselves (see `setattr` and `write`).
            // A direct write then needs nothing more from the kernel; a cached one still asks
            // for security.capability first (the VFS's file_remove_privs).
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
        ];
        for flag in wanted {
            if config.add_capabilities(flag).is_err() {
                tracing::info!(?flag, "kernel does not offer FUSE capability");
            }
        }
        self.direct_io_on_create = config
            .add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
            .is_ok();
        // Backing files are packs on the store's file system; a stack depth of 1 lets that be
        // any ordinary file system (not an overlayfs or another FUSE mount).
        self.passthrough = self.passthrough_wanted
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok();
        tracing::debug!(passthrough = self.passthrough, "INIT");
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        Ok(())
    }

    fn forget(&self, _req: &Request, i: INodeNo, _nlookup: u64) {
        // The kernel forgets an inode only when it evicts it, with every lookup at once.
        self.tree.forget(ino(i));
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEntry) {
        let found = || match self.tree.lookup(ino(parent), name(n)) {
            Ok((i, inode)) => self.tree.attr(i, &inode).map(Some),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        };
        self.serve("lookup", reply, found, |reply, attr| match attr {
            Some(a) => self.entry_reply(reply, &a),
            // An entry with inode 0 makes the kernel cache the miss.
            None => reply.entry(&TTL, &negative_attr(), Generation(0)),
        });
    }

    fn getattr(&self, _req: &Request, i: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.serve(
            "getattr",
            reply,
            || self.tree.getattr(ino(i)),
            |r, a| r.attr(&TTL, &file_attr(&a)),
        );
    }

    fn setattr(
        &self,
        req: &Request,
        i: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // With HANDLE_KILLPRIV_V2 the kernel leaves killing privileges to us, and fuser 0.18 does
        // not pass on its FATTR_KILL_SUIDGID flag, so apply the kernel's own rules: chown clears
        // setuid/setgid and capabilities; a truncate clears capabilities, and setuid/setgid too
        // unless the caller is root (CAP_FSETID). A mode given in the same call wins.
        let chown = uid.is_some() || gid.is_some();
        let set = SetAttr {
            perm: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: time_or_now(atime),
            mtime: time_or_now(mtime),
            ctime: ctime.map(timestamp),
            kill_suid: mode.is_none() && (chown || (size.is_some() && req.uid() != 0)),
            kill_caps: chown || size.is_some(),
        };
        let changed = || {
            if size.is_some() {
                self.check_not_passed_through(ino(i))?;
            }
            self.tree.setattr(ino(i), &set)
        };
        self.serve("setattr", reply, changed, |r, a| {
            r.attr(&TTL, &file_attr(&a))
        });
    }

    fn readlink(&self, _req: &Request, i: INodeNo, reply: ReplyData) {
        self.serve(
            "readlink",
            reply,
            || self.tree.readlink(ino(i)),
            |r, t| r.data(&t),
        );
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let made = || {
            let kind = FileKind::from_mode(mode)
                .ok_or_else(|| Error::Invalid(format!("mknod mode {mode:o}")))?;
            let mut node = self.new_node(req, ino(parent), kind, mode)?;
            node.rdev = rdev as u64;
            let (i, inode) = self.tree.mknod(ino(parent), name(n), &node)?;
            self.tree.attr(i, &inode)
        };
        self.serve("mknod", reply, made, |r, a| self.entry_reply(r, &a));
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let made = || {
            let node = self.new_node(req, ino(parent), FileKind::Dir, mode)?;
            let (i, inode) = self.tree.mknod(ino(parent), name(n), &node)?;
            self.tree.attr(i, &inode)
        };
        self.serve("mkdir", reply, made, |r, a| self.entry_reply(r, &a));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        self.serve(
            "unlink",
            reply,
            || self.tree.unlink(ino(parent), name(n)),
            |r, ()| r.ok(),
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        self.serve(
            "rmdir",
            reply,
            || self.tree.rmdir(ino(parent), name(n)),
            |r, ()| r.ok(),
        );
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let made = || {
            let mut node = self.new_node(req, ino(parent), FileKind::Symlink, 0o777)?;
            node.perm = 0o777;
            node.target = target.as_os_str().as_bytes().to_vec();
            let (i, inode) = self.tree.mknod(ino(parent), name(link), &node)?;
            self.tree.attr(i, &inode)
        };
        self.serve("symlink", reply, made, |r, a| self.entry_reply(r, &a));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        n: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let renamed = || {
            let mode = if flags.contains(RenameFlags::RENAME_EXCHANGE) {
                RenameMode::Exchange
            } else if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                RenameMode::NoReplace
            } else if flags.is_empty() {
                RenameMode::Replace
            } else {
                return Err(Error::Invalid(format!("rename flags {flags:?}")));
            };
            self.tree
                .rename(ino(parent), name(n), ino(newparent), name(newname), mode)
        };
        self.serve("rename", reply, renamed, |r, ()| r.ok());
    }

    fn link(
        &self,
        _req: &Request,
        i: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let linked = || {
            let inode = self.tree.link(ino(i), ino(newparent), name(newname))?;
            self.tree.attr(ino(i), &inode)
        };
        self.serve("link", reply, linked, |r, a| self.entry_reply(r, &a));
    }

    fn open(&self, _req: &Request, i: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        // Without passthrough, files need no per-open state here (reads and writes name the
        // inode), and ENOSYS tells the kernel to stop sending OPEN and RELEASE for files at all,
        // keeping their pages across opens (FOPEN_KEEP_CACHE is its default then): two round
        // trips less for every file a build or `tar -c` reads. CREATE still opens.
        if !self.passthrough {
            reply.error(Errno::ENOSYS);
            return;
        }
        let start = Instant::now();
        let opened = catch_unwind(AssertUnwindSafe(|| self.open_file(ino(i), flags, &reply)));
        if let Some(stats) = &self.stats {
            stats.record("open", start.elapsed());
        }
        match opened {
            Ok(Ok((fh, Some(backing)))) => {
                // FOPEN_KEEP_CACHE would make the kernel refuse passthrough (EIO).
                reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &backing)
            }
            Ok(Ok((fh, None))) => reply.opened(FileHandle(fh), self.open_flags()),
            Ok(Err(e)) => reply.error(errno("open", &e)),
            Err(_) => {
                tracing::error!(op = "open", "request handler panicked; replied EIO");
                reply.error(Errno::EIO);
            }
        }
    }

    fn release(
        &self,
        _req: &Request,
        i: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.release_file(ino(i), fh.0);
        reply.ok();
    }

    fn read(
        &self,
        _req: &Request,
        i: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.serve(
            "read",
            reply,
            || self.tree.read(ino(i), offset, size),
            |r, data| r.data(&data),
        );
    }

    /// SEEK_DATA and SEEK_HOLE (the kernel answers the other whences itself), so tools that
    /// copy sparse files (cp, tar --sparse) find the holes of a file instead of reading zeros.
    fn lseek(
        &self,
        _req: &Request,
        i: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        self.serve(
            "lseek",
            reply,
            || {
                let data = match whence {
                    libc::SEEK_DATA => true,
                    libc::SEEK_HOLE => false,
                    _ => return Err(Error::Invalid(format!("lseek whence {whence}"))),
                };
                let offset = u64::try_from(offset)
                    .map_err(|_| Error::Invalid(format!("lseek offset {offset}")))?;
                self.tree.seek_data(ino(i), offset, data)
            },
            |r, at| match at {
                Some(at) => r.offset(at as i64),
                None => r.error(Errno::ENXIO),
            },
        );
    }

    fn write(
        &self,
        _req: &Request,
        i: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        self.serve(
            "write",
            reply,
            || self.tree.write_as(ino(i), offset, data, kill),
            |r, n| r.written(n as u32),
        );
    }

    fn flush(
        &self,
        _req: &Request,
        _i: INodeNo,
        _fh: FileHandle,
        _lock: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing is buffered here, so close(2) has nothing to report. ENOSYS tells the kernel
        // to stop sending FLUSH at all: one round trip less for every close.
        reply.error(Errno::ENOSYS);
    }

    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: fuser::PollNotifier,
        _events: fuser::PollEvents,
        _flags: fuser::PollFlags,
        reply: fuser::ReplyPoll,
    ) {
        // Regular files are always ready. ENOSYS makes the kernel answer poll/select/epoll
        // itself ("always readable and writable") and stop asking; fuser's default does the
        // same but logs a warning on every call, which shows up in every build's output.
        reply.error(Errno::ENOSYS);
    }

    fn fsync(
        &self,
        _req: &Request,
        _i: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        if self.volatile {
            // Nothing to make durable: ENOSYS stops the kernel sending FSYNC (it still writes
            // dirty pages back, and reports success). dpkg fsyncs every file it unpacks.
            reply.error(Errno::ENOSYS);
            return;
        }
        self.serve("fsync", reply, || self.tree.fsync(), |r, ()| r.ok());
    }

    fn opendir(&self, _req: &Request, i: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.serve(
            "opendir",
            reply,
            || self.tree.readdir(ino(i)),
            |reply, entries| {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                self.dirs
                    .lock()
                    .expect("poisoned")
                    .insert(fh, Arc::new(entries));
                reply.opened(
                    FileHandle(fh),
                    FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
                );
            },
        );
    }

    fn readdir(
        &self,
        _req: &Request,
        i: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let fill = |reply: &mut ReplyDirectory| {
            let entries = self.listing(fh)?;
            let parent = self.tree.parent_of(ino(i))?;
            let dots = [(i.0, b".".as_slice()), (parent.0, b"..".as_slice())];
            for off in offset..entries.len() as u64 + 2 {
                let full = if off < 2 {
                    let (n, nm) = dots[off as usize];
                    reply.add(
                        INodeNo(n),
                        off + 1,
                        FileType::Directory,
                        OsStr::from_bytes(nm),
                    )
                } else {
                    let e = &entries[(off - 2) as usize];
                    reply.add(
                        INodeNo(e.ino.0),
                        off + 1,
                        file_type(e.kind),
                        OsStr::from_bytes(&e.name),
                    )
                };
                if full {
                    break;
                }
            }
            Ok(())
        };
        self.serve_mut("readdir", reply, fill, |r| r.ok());
    }

    fn readdirplus(
        &self,
        _req: &Request,
        i: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        let fill = |reply: &mut ReplyDirectoryPlus| {
            let entries = self.listing(fh)?;
            for off in offset..entries.len() as u64 + 2 {
                let (n, nm) = match off {
                    0 => (ino(i), b".".as_slice()),
                    1 => (self.tree.parent_of(ino(i))?, b"..".as_slice()),
                    _ => {
                        let e = &entries[(off - 2) as usize];
                        (e.ino, e.name.as_slice())
                    }
                };
                let attr = match self.tree.getattr(n) {
                    Ok(a) => a,
                    // Removed since opendir: skip it rather than fail the listing.
                    Err(Error::Stale(_)) if off >= 2 => continue,
                    Err(e) => return Err(e),
                };
                if reply.add(
                    INodeNo(n.0),
                    off + 1,
                    OsStr::from_bytes(nm),
                    &TTL,
                    &file_attr(&attr),
                    Generation(0),
                ) {
                    break;
                }
            }
            Ok(())
        };
        self.serve_mut("readdirplus", reply, fill, |r| r.ok());
    }

    fn releasedir(
        &self,
        _req: &Request,
        _i: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs.lock().expect("poisoned").remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _i: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        if self.volatile {
            // As `fsync`: the kernel stops sending FSYNCDIR and reports success.
            reply.error(Errno::ENOSYS);
            return;
        }
        self.serve(
            "fsyncdir",
            reply,
            || self.tree.fsync_metadata(),
            |r, ()| r.ok(),
        );
    }

    fn statfs(&self, _req: &Request, _i: INodeNo, reply: ReplyStatfs) {
        reply_statfs(self.tree.store().root(), reply);
    }

    /// No ioctl is supported: ENOTTY, as ext4 answers one it does not know, and quietly (fuser's
    /// default warns on each, and Python asks TCGETS of every file it opens: ~1,000 lines a build).
    fn ioctl(
        &self,
        _req: &Request,
        _i: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn setxattr(
        &self,
        _req: &Request,
        i: INodeNo,
        n: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let set = || {
            let shown = || String::from_utf8_lossy(name(n)).into_owned();
            let exists = match self.tree.getxattr(ino(i), name(n)) {
                Ok(_) => true,
                Err(Error::NoAttr(_)) => false,
                Err(e) => return Err(e),
            };
            if flags & libc::XATTR_CREATE != 0 && exists {
                return Err(Error::Exists(shown()));
            }
            if flags & libc::XATTR_REPLACE != 0 && !exists {
                return Err(Error::NoAttr(shown()));
            }
            self.tree.setxattr(ino(i), name(n), value)
        };
        self.serve("setxattr", reply, set, |r, ()| r.ok());
    }

    fn getxattr(&self, _req: &Request, i: INodeNo, n: &OsStr, size: u32, reply: ReplyXattr) {
        self.serve(
            "getxattr",
            reply,
            || self.tree.getxattr(ino(i), name(n)),
            |r, v| xattr_reply(r, size, &v),
        );
    }

    fn listxattr(&self, _req: &Request, i: INodeNo, size: u32, reply: ReplyXattr) {
        let names = || {
            let mut buf = Vec::new();
            for n in self.tree.listxattr(ino(i))? {
                buf.extend_from_slice(&n);
                buf.push(0);
            }
            Ok(buf)
        };
        self.serve("listxattr", reply, names, |r, buf| {
            xattr_reply(r, size, &buf)
        });
    }

    fn removexattr(&self, _req: &Request, i: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        self.serve(
            "removexattr",
            reply,
            || self.tree.removexattr(ino(i), name(n)),
            |r, ()| r.ok(),
        );
    }

    fn access(&self, _req: &Request, _i: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // With default_permissions the kernel has already checked the mode bits.
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let made = || {
            let node = self.new_node(req, ino(parent), FileKind::File, mode)?;
            let (i, inode) = self.tree.mknod(ino(parent), name(n), &node)?;
            self.tree.attr(i, &inode)
        };
        self.serve("create", reply, made, |r, a| {
            r.created(
                &TTL,
                &file_attr(&a),
                Generation(0),
                FileHandle(0),
                self.create_flags(),
            )
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        i: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let allocated = || match mode {
            0 => {
                let end = offset.saturating_add(length);
                if end > self.tree.getattr(ino(i))?.size {
                    self.tree.setattr(
                        ino(i),
                        &SetAttr {
                            size: Some(end),
                            ..Default::default()
                        },
                    )?;
                }
                Ok(())
            }
            libc::FALLOC_FL_KEEP_SIZE => self.tree.getattr(ino(i)).map(|_| ()),
            // The kernel accepts PUNCH_HOLE only together with KEEP_SIZE.
            m if m == libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE => {
                self.tree.punch_hole(ino(i), offset, length)
            }
            _ => Err(Error::io(
                "fallocate",
                std::io::Error::from_raw_os_error(libc::EOPNOTSUPP),
            )),
        };
        self.serve("fallocate", reply, allocated, |r, ()| r.ok());
    }
}

/// Answers getxattr/listxattr: the size when asked for it, ERANGE when the buffer is too small.
fn xattr_reply(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::from_i32(libc::ERANGE));
    } else {
        reply.data(value);
    }
}

//! (img's patch) FUSE over io_uring: one queue per CPU, each served by a thread pinned to that
//! CPU, whose ring holds a few registered entries. The kernel queues a request on the caller's
//! CPU, so the thread that answers it runs where the caller sleeps and no other vCPU has to be
//! woken. Requests are rebuilt into the /dev/fuse layout and go through the same dispatch as
//! the /dev/fuse workers; replies are copied into the entry and committed with
//! COMMIT_AND_FETCH, which also asks for the next request. ABI: include/uapi/linux/fuse.h
//! (`struct fuse_uring_req_header`, `struct fuse_uring_cmd_req`).

use std::alloc::Layout;
use std::cell::Cell;
use std::fmt;
use std::io;
use std::io::IoSlice;
use std::os::fd::AsRawFd;
use std::os::fd::BorrowedFd;
use std::os::fd::FromRawFd;
use std::os::fd::OwnedFd;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use io_uring::IoUring;
use io_uring::cqueue;
use io_uring::opcode;
use io_uring::squeue;
use io_uring::types;
use log::debug;
use log::error;
use log::info;
use log::warn;
use parking_lot::Mutex;

use crate::Filesystem;
use crate::InitFlags;
use crate::KernelConfig;
use crate::ReplyEmpty;
use crate::channel::ChannelSender;
use crate::ll::Operation;
use crate::passthrough::BackingId;
use crate::request::RequestWithSender;
use crate::session::SessionEventLoop;

/// Entries per queue. Each one carries a request at a time; a few let a queue hold requests
/// from several callers on its CPU without sending them back to /dev/fuse.
pub(crate) const QUEUE_DEPTH: usize = 4;

/// The header buffer of an entry: `struct fuse_uring_req_header` (288 bytes), page aligned
/// because the kernel pins it.
const HEADER_BUF: usize = 4096;
/// Offsets in `struct fuse_uring_req_header`.
const OP_IN: usize = 128;
const OP_IN_SIZE: usize = 128;
const ENT_COMMIT_ID: usize = 256 + 8;
const ENT_PAYLOAD_SZ: usize = 256 + 16;
/// `struct fuse_in_header`.
const IN_HEADER: usize = 40;
/// `struct fuse_out_header`.
const OUT_HEADER: usize = 16;

const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;
/// user_data of the poll on the queue's stop eventfd.
const STOP: u64 = u64::MAX;

thread_local! {
    /// Set on a ring thread: its replies are submitted by its next wait, in the same
    /// io_uring_enter(2), instead of one of their own.
    static ON_RING_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// A zeroed, page-aligned allocation. Pages are only touched when the kernel or we write them,
/// so an entry's payload buffer (max_write) costs memory only as far as requests fill it.
struct PageBuf {
    ptr: *mut u8,
    layout: Layout,
}

impl PageBuf {
    fn new(size: usize) -> io::Result<PageBuf> {
        let layout = Layout::from_size_align(size.max(1), 4096)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(io::Error::new(io::ErrorKind::OutOfMemory, "ring buffer"));
        }
        Ok(PageBuf { ptr, layout })
    }
}

impl Drop for PageBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

struct Ent {
    header: PageBuf,
    payload: PageBuf,
    /// [header, payload], read by the kernel when the entry registers.
    iov: Box<[libc::iovec; 2]>,
    /// The commit id of the last COMMIT_AND_FETCH, 0 while the entry is only registered: what
    /// to resubmit when the kernel answers -EAGAIN or -EINTR.
    last_commit: AtomicU64,
}

/// One queue: a ring on one CPU and its entries.
pub(crate) struct Queue {
    qid: u16,
    fd: RawFd,
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    /// Serialises pushes to the submission queue: a reply may come from any thread.
    sq: Mutex<()>,
    ents: Vec<Ent>,
    payload_size: usize,
    stop: OwnedFd,
}

// SAFETY: the raw buffers are owned by the queue; an entry's buffers are written only by the
// one request it carries (or by the kernel while it owns the entry), and the submission queue
// is pushed to under `sq`.
unsafe impl Send for Queue {}
unsafe impl Sync for Queue {}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Queue({})", self.qid)
    }
}

impl Queue {
    /// Sets up queue `qid` on the /dev/fuse connection `fd` with entries able to carry
    /// `payload_size` bytes of request or reply data (at least the connection's max_write).
    pub(crate) fn new(qid: u16, fd: BorrowedFd<'_>, payload_size: usize) -> io::Result<Queue> {
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .build((QUEUE_DEPTH + 1).next_power_of_two() as u32)?;
        // SAFETY: plain eventfd(2).
        let stop = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if stop < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: just created, owned here.
        let stop = unsafe { OwnedFd::from_raw_fd(stop) };
        let mut ents = Vec::with_capacity(QUEUE_DEPTH);
        for _ in 0..QUEUE_DEPTH {
            let header = PageBuf::new(HEADER_BUF)?;
            let payload = PageBuf::new(payload_size)?;
            let iov = Box::new([
                libc::iovec {
                    iov_base: header.ptr.cast(),
                    iov_len: HEADER_BUF,
                },
                libc::iovec {
                    iov_base: payload.ptr.cast(),
                    iov_len: payload_size,
                },
            ]);
            ents.push(Ent {
                header,
                payload,
                iov,
                last_commit: AtomicU64::new(0),
            });
        }
        Ok(Queue {
            qid,
            fd: fd.as_raw_fd(),
            ring,
            sq: Mutex::new(()),
            ents,
            payload_size,
            stop,
        })
    }

    /// Wakes the queue's thread and makes it return.
    pub(crate) fn stop(&self) {
        let one = 1u64;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd.
        unsafe { libc::write(self.stop.as_raw_fd(), (&raw const one).cast(), 8) };
    }

    fn cmd(&self, commit_id: u64) -> [u8; 80] {
        // struct fuse_uring_cmd_req { u64 flags; u64 commit_id; u16 qid; u8 padding[6]; }
        let mut cmd = [0u8; 80];
        cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
        cmd[16..18].copy_from_slice(&self.qid.to_ne_bytes());
        cmd
    }

    fn push(&self, sqe: &squeue::Entry128) -> io::Result<()> {
        let _guard = self.sq.lock();
        // SAFETY: `sq` makes this the only writer of the submission queue.
        let mut sq = unsafe { self.ring.submission_shared() };
        // SAFETY: the buffers an SQE points at live as long as the queue.
        unsafe { sq.push(sqe) }.map_err(|_| io::Error::other("io_uring submission queue full"))
    }

    fn push_register(&self, ent: usize) -> io::Result<()> {
        self.ents[ent].last_commit.store(0, Ordering::Relaxed);
        let sqe = opcode::UringCmd80::new(types::Fd(self.fd), CMD_REGISTER)
            .cmd(self.cmd(0))
            .addr(Some(self.ents[ent].iov.as_ptr() as u64))
            .build()
            .user_data(ent as u64);
        // The builder has no `len`: set the iovec count in the SQE (offset 24, `__u32 len`).
        // SAFETY: Entry128 is repr(C) over the 128-byte SQE.
        let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
        raw[24..28].copy_from_slice(&2u32.to_ne_bytes());
        // SAFETY: as above.
        let sqe: squeue::Entry128 = unsafe { std::mem::transmute(raw) };
        self.push(&sqe)
    }

    fn commit(&self, ent: usize, commit_id: u64) -> io::Result<()> {
        self.ents[ent].last_commit.store(commit_id, Ordering::Relaxed);
        let sqe = opcode::UringCmd80::new(types::Fd(self.fd), CMD_COMMIT_AND_FETCH)
            .cmd(self.cmd(commit_id))
            .build()
            .user_data(ent as u64);
        self.push(&sqe)?;
        if !ON_RING_THREAD.with(Cell::get) {
            self.ring.submit()?;
        }
        Ok(())
    }

    fn header(&self, ent: usize) -> *mut u8 {
        self.ents[ent].header.ptr
    }

    /// Copies entry `ent`'s request into `buf` in the /dev/fuse layout ([fuse_in_header |
    /// op header | payload]) and returns its length and commit id.
    fn request(&self, ent: usize, buf: &mut [u8]) -> Result<(usize, u64), String> {
        let h = self.header(ent);
        // SAFETY: the kernel has filled the header buffer and hands the entry to us until we
        // commit it; all offsets are within HEADER_BUF.
        let (in_header, op_in, commit_id, payload_sz) = unsafe {
            (
                std::slice::from_raw_parts(h, IN_HEADER),
                std::slice::from_raw_parts(h.add(OP_IN), OP_IN_SIZE),
                h.add(ENT_COMMIT_ID).cast::<u64>().read(),
                h.add(ENT_PAYLOAD_SZ).cast::<u32>().read() as usize,
            )
        };
        // The kernel puts a request's first argument (its op header, zero-sized for ops that
        // have none) in op_in and the rest in the payload; the header's len still counts all
        // of it, which gives the op header's size.
        let len = u32::from_ne_bytes(in_header[0..4].try_into().unwrap()) as usize;
        let op_len = len
            .checked_sub(IN_HEADER + payload_sz)
            .filter(|&n| n <= OP_IN_SIZE && payload_sz <= self.payload_size)
            .ok_or_else(|| {
                format!("ring request of len {len} with a payload of {payload_sz} bytes")
            })?;
        if len > buf.len() {
            return Err(format!("ring request of {len} bytes"));
        }
        buf[..IN_HEADER].copy_from_slice(in_header);
        buf[IN_HEADER..IN_HEADER + op_len].copy_from_slice(&op_in[..op_len]);
        // SAFETY: payload_sz <= the payload buffer's size, checked above.
        let payload = unsafe { std::slice::from_raw_parts(self.ents[ent].payload.ptr, payload_sz) };
        buf[IN_HEADER + op_len..len].copy_from_slice(payload);
        Ok((len, commit_id))
    }
}

/// Replies to the request carried by one ring entry.
#[derive(Clone)]
pub(crate) struct UringSender {
    queue: Arc<Queue>,
    ent: usize,
    commit_id: u64,
    /// For what does not go through the ring (backing files).
    ch: ChannelSender,
}

impl fmt::Debug for UringSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UringSender({}:{})", self.queue.qid, self.ent)
    }
}

impl UringSender {
    /// Copies the reply (`data[0]` is the fuse_out_header) into the entry and commits it.
    pub(crate) fn send(&self, data: &[IoSlice<'_>]) -> io::Result<()> {
        let q = &self.queue;
        let h = q.header(self.ent);
        let payload = q.ents[self.ent].payload.ptr;
        let mut n = 0usize;
        let mut error = None;
        for slice in data.iter().skip(1) {
            if n + slice.len() > q.payload_size {
                error = Some(-libc::EINVAL);
                n = 0;
                break;
            }
            // SAFETY: within the payload buffer, checked above; the entry is ours until the
            // commit below.
            unsafe { std::ptr::copy_nonoverlapping(slice.as_ptr(), payload.add(n), slice.len()) };
            n += slice.len();
        }
        let out = &data[0];
        // SAFETY: the out header (16 bytes) fits in in_out (128 bytes).
        unsafe {
            std::ptr::copy_nonoverlapping(out.as_ptr(), h, out.len().min(OUT_HEADER));
            if let Some(errno) = error {
                h.add(4).cast::<i32>().write(errno);
            }
            h.add(ENT_PAYLOAD_SZ).cast::<u32>().write(n as u32);
        }
        q.commit(self.ent, self.commit_id)
    }

    pub(crate) fn open_backing(&self, fd: BorrowedFd<'_>) -> io::Result<BackingId> {
        self.ch.open_backing(fd)
    }

    pub(crate) unsafe fn wrap_backing(&self, id: u32) -> BackingId {
        unsafe { self.ch.wrap_backing(id) }
    }
}

/// At INIT, with `Config::io_uring`: asks for FUSE over io_uring when the kernel offers it and
/// returns the payload size of a ring entry, or `None` when the session serves /dev/fuse only.
/// An entry's payload buffer must hold the largest request or reply: the kernel checks it
/// against max(8 KiB, max_write, max_pages pages) at registration.
pub(crate) fn negotiate(config: &mut KernelConfig) -> Option<usize> {
    if !config.capabilities.contains(InitFlags::FUSE_OVER_IO_URING) {
        debug!("the kernel does not offer FUSE over io_uring (enable_uring): /dev/fuse only");
        return None;
    }
    // Upstream fuser refuses this capability (it has no rings): a rebase that brought that
    // refusal in must not switch the rings off quietly. The unit test below fails then.
    if let Err(refused) = config.add_capabilities(InitFlags::FUSE_OVER_IO_URING) {
        error!("FUSE over io_uring is offered but was refused ({refused:?}): /dev/fuse only");
        return None;
    }
    let page = page_size::get();
    let payload = (config.max_write as usize)
        .max(config.max_pages() as usize * page)
        .max(8192);
    info!("FUSE over io_uring: {} queues", queue_count());
    Some(payload.div_ceil(page) * page)
}

/// The number of queues the kernel expects: one per possible CPU (the ring is used only once
/// every queue has registered an entry).
pub(crate) fn queue_count() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
    n.max(1) as usize
}

/// The device number (major, minor) of the FUSE mount at `mount_point` (an absolute path
/// without symlinks): the newest FUSE mount at that path in /proc/self/mountinfo. Read from
/// there, not with stat(2), which would wait for the session to answer.
pub(crate) fn mount_device(mount_point: &std::path::Path) -> Option<(u32, u32)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let dev = info
        .lines()
        .filter_map(|line| {
            // id parent major:minor root mount-point options... - fstype source super-options
            let f: Vec<&str> = line.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            let fuse = f.get(sep + 1)?.starts_with("fuse");
            (fuse && unescape(f.get(4)?) == mount_point.as_os_str().as_encoded_bytes())
                .then(|| f[2])
        })
        .next_back()?;
    let (major, minor) = dev.split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The id fusectl gives the connection of the mount with device `(major, minor)` (the name of
/// its directory under /sys/fs/fuse/connections): the kernel's encoding of the device number.
pub(crate) fn connection_id((major, minor): (u32, u32)) -> u32 {
    (major << 20) | minor
}

/// mountinfo's octal escapes (`\040` for a space) undone.
fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d).ok().and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (b[i], octal) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// The FUSE connection a session's rings serve: what a failing ring needs to end it.
#[derive(Debug)]
pub(crate) struct Connection {
    /// The mount's device number (`mount_device`).
    pub(crate) device: (u32, u32),
    /// The mount point, resolved, when it was known.
    pub(crate) mount_point: Option<std::path::PathBuf>,
}

/// Ends `connection` (the kernel then fails every pending and later request with ENOTCONN, and
/// the /dev/fuse workers see the end of the session), as libfuse ends the session when a ring
/// fails. Through fusectl (/sys/fs/fuse/connections/ID/abort) where it is mounted; where it is
/// not (a host without systemd, which mounts it), by a forced unmount of the mount point,
/// which aborts a FUSE connection first thing (the kernel's `fuse_umount_begin`) whether the
/// unmount then succeeds or finds the mount busy. Either needs root (of the mount's user
/// namespace for the unmount); otherwise the requests queued on the failed ring wait until
/// the mount goes away.
fn abort_connection(connection: Option<&Connection>) {
    let Some(connection) = connection else {
        error!("cannot end the FUSE connection: its id is unknown");
        return;
    };
    let id = connection_id(connection.device);
    let path = format!("/sys/fs/fuse/connections/{id}/abort");
    let fusectl = match std::fs::write(&path, b"1") {
        Ok(()) => {
            error!("ended FUSE connection {id} after a ring failure");
            return;
        }
        Err(e) => e,
    };
    let forced = match &connection.mount_point {
        // Only while the mount point still shows this connection's mount.
        Some(mp) if mount_device(mp) == Some(connection.device) => {
            match nix::mount::umount2(mp.as_path(), nix::mount::MntFlags::MNT_FORCE) {
                Ok(()) | Err(nix::errno::Errno::EBUSY) => {
                    error!(
                        "ended FUSE connection {id} after a ring failure, by a forced unmount of {} ({path}: {fusectl})",
                        mp.display()
                    );
                    return;
                }
                Err(e) => format!("forced unmount of {}: {e}", mp.display()),
            }
        }
        Some(mp) => format!("{} no longer shows the mount", mp.display()),
        None => "its mount point is unknown".to_string(),
    };
    error!(
        "cannot end FUSE connection {id} ({path}: {fusectl}; {forced}); requests on the failed ring will wait until the mount is gone"
    );
}

/// (img's patch) Told about the ring threads of a session (`Config::ring_observer`), so that the
/// file system can manage their scheduling (imgfs runs them under SCHED_IDLE while they are
/// busy) without fuser knowing how.
pub trait RingObserver: fmt::Debug + Send + Sync {
    /// Called on each ring thread, with its thread id, before it serves its first request.
    fn ring_thread_started(self: Arc<Self>, tid: libc::pid_t);
    /// Called once every ring thread of the session has ended, before `Filesystem::destroy`;
    /// only for a session that started any.
    fn rings_stopped(&self);
}

/// Two observers are equal when they are the same object (`Config` is `Eq`).
impl PartialEq for dyn RingObserver {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::addr_eq(self, other)
    }
}

impl Eq for dyn RingObserver {}

/// Serves `queue` on the current thread, pinned to CPU `qid`, until the queue is stopped or
/// the connection ends. A failure of the ring ends the whole connection (`connection`, see
/// `abort_connection`), since the kernel would keep queuing requests to it. `fail_after`:
/// `Config::uring_fail_after`, shared by the session's rings.
pub(crate) fn serve<FS: Filesystem>(
    queue: Arc<Queue>,
    se: SessionEventLoop<FS>,
    connection: Option<Arc<Connection>>,
    observer: Option<Arc<dyn RingObserver>>,
    fail_after: Option<Arc<AtomicU64>>,
) -> io::Result<()> {
    if let Some(observer) = observer {
        // SAFETY: gettid has no preconditions.
        observer.ring_thread_started(unsafe { libc::gettid() });
    }
    let res = serve_queue(queue, se, fail_after.as_deref());
    if res.is_err() {
        abort_connection(connection.as_deref());
    }
    res
}

/// The test hook `Config::uring_fail_after`: whether this request is one past the count of
/// requests left to serve (`left`, counted down).
fn injected_failure(left: Option<&AtomicU64>) -> bool {
    left.is_some_and(|left| {
        left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_err()
    })
}

fn serve_queue<FS: Filesystem>(
    queue: Arc<Queue>,
    se: SessionEventLoop<FS>,
    fail_after: Option<&AtomicU64>,
) -> io::Result<()> {
    let qid = queue.qid as usize;
    let mut cpus = nix::sched::CpuSet::new();
    if cpus.set(qid).is_ok() {
        if let Err(e) = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpus) {
            warn!("cannot pin ring thread {qid} to its CPU: {e}");
        }
    }
    ON_RING_THREAD.with(|c| c.set(true));

    let stop = opcode::PollAdd::new(types::Fd(queue.stop.as_raw_fd()), libc::POLLIN as u32)
        .build()
        .user_data(STOP);
    queue.push(&squeue::Entry128::from(stop))?;
    for ent in 0..queue.ents.len() {
        queue.push_register(ent)?;
    }

    let mut buf = vec![0u8; IN_HEADER + OP_IN_SIZE + queue.payload_size];
    let mut done = Vec::with_capacity(QUEUE_DEPTH + 1);
    loop {
        // Submits the replies made on this thread since the last wait, then waits.
        match queue.ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
        done.clear();
        // SAFETY: only this thread reads the completion queue.
        done.extend(unsafe { queue.ring.completion_shared() }.map(|c| (c.user_data(), c.result())));
        for &(user_data, res) in &done {
            if user_data == STOP {
                return Ok(());
            }
            let ent = user_data as usize;
            if res == -libc::EAGAIN || res == -libc::EINTR {
                // Resubmit the same command; the reply is still in the entry.
                match queue.ents[ent].last_commit.load(Ordering::Relaxed) {
                    0 => queue.push_register(ent)?,
                    commit_id => queue.commit(ent, commit_id)?,
                }
                continue;
            }
            if res == -libc::ENOTCONN || res == -libc::ENODEV {
                debug!("ring {qid}: connection ended");
                return Ok(());
            }
            if res < 0 || injected_failure(fail_after) {
                let e = io::Error::from_raw_os_error(if res < 0 { -res } else { libc::EIO });
                error!("ring {qid}: entry {ent} failed: {e}");
                return Err(e);
            }
            let (len, commit_id) = match queue.request(ent, &mut buf) {
                Ok(r) => r,
                Err(e) => {
                    error!("ring {qid}: {e}");
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            };
            let sender = UringSender {
                queue: queue.clone(),
                ent,
                commit_id,
                ch: se.ch.sender(),
            };
            let Some(req) = RequestWithSender::new_uring(se.ch.sender(), &buf[..len], sender)
            else {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "invalid ring request"));
            };
            if let Ok(Operation::Destroy(_)) = req.request.operation() {
                // The /dev/fuse workers end the session when the connection goes away.
                req.reply::<ReplyEmpty>().ok();
            } else {
                req.dispatch(&se);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/var/tmp/a\040b"), b"/var/tmp/a b");
        assert_eq!(unescape(r"/x\134y\011"), b"/x\\y\t");
        // A backslash not followed by three octal digits stays as it is.
        assert_eq!(unescape(r"/x\9y\"), br"/x\9y\");
    }

    #[test]
    fn connection_id_is_the_kernels_device_encoding() {
        // fusectl names a connection by the superblock's dev_t: MKDEV(major, minor).
        assert_eq!(connection_id((0, 52)), 52);
        assert_eq!(connection_id((1, 2)), (1 << 20) | 2);
    }

    #[test]
    fn io_uring_is_asked_for_whenever_the_kernel_offers_it() {
        // Upstream refuses FUSE_OVER_IO_URING in `add_capabilities`; after a rebase that kept
        // that refusal, imgfs would silently serve /dev/fuse only. This must fail then.
        let offered = InitFlags::FUSE_OVER_IO_URING | InitFlags::FUSE_MAX_PAGES;
        let mut config = KernelConfig::new(offered, 128 * 1024, crate::ll::Version(7, 45));
        config.set_max_write(1 << 20).unwrap();
        let payload = negotiate(&mut config).expect("FUSE over io_uring was not asked for");
        assert!(config.requested.contains(InitFlags::FUSE_OVER_IO_URING));
        assert_eq!(payload, 1 << 20);

        let mut config = KernelConfig::new(InitFlags::empty(), 128 * 1024, crate::ll::Version(7, 45));
        assert_eq!(negotiate(&mut config), None);
        assert!(!config.requested.contains(InitFlags::FUSE_OVER_IO_URING));
    }

    #[test]
    fn the_failure_hook_fails_every_request_after_the_nth() {
        assert!(!injected_failure(None));
        let left = AtomicU64::new(2);
        let fails: Vec<bool> = (0..4).map(|_| injected_failure(Some(&left))).collect();
        assert_eq!(fails, [false, false, true, true]);
    }
}

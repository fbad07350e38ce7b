//! Applying an OCI layer tar (plain, gzip or zstd) to a snapshot.
//!
//! Never uses `tar::Archive::unpack`: every entry is applied through `Tree` operations, so paths
//! can only name things inside the snapshot. Parent components that are symlinks are followed
//! inside the tree (an absolute target restarts at its root, `..` stops there), hard-link targets
//! must already be in the tree, and `..` components are refused. A layer that fails at any point
//! leaves nothing behind: the half-filled snapshot is removed (or rolled back at the next open
//! if the process dies).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};

use flate2::read::MultiGzDecoder;
use sha2::{Digest, Sha256};

pub use super::limits::ImportLimits;
use super::limits::{CountingReader, Meter, MeteredReader};
use super::{HashingReader, OPAQUE_MARKER, WHITEOUT_PREFIX};
use crate::error::{Error, Result};
use crate::ids::Ino;
use crate::records::{FileKind, Inode, SnapshotRecord, Timestamp};
use crate::store::Store;
use crate::tree::Tree;

/// What an import produced.
#[derive(Clone, Debug)]
pub struct ImportReport {
    pub snapshot: SnapshotRecord,
    /// The sha256 of the uncompressed tar: the layer's OCI diff id.
    pub diff_id: String,
    pub entries: u64,
    /// Bytes of uncompressed tar stream.
    pub tar_bytes: u64,
}

/// Applies the layer read from `input` on top of the committed snapshot `parent` (or on an empty
/// tree) and commits the result as `name`.
pub fn import_layer(
    store: &Store,
    name: &str,
    parent: Option<&str>,
    input: impl Read,
    limits: &ImportLimits,
) -> Result<ImportReport> {
    store.prepare_import(name, parent)?;
    let tree = store.tree(name)?;
    let applied = apply(&tree, input, limits);
    drop(tree);
    match applied {
        Ok((diff_id, entries, tar_bytes)) => {
            let snapshot = store.commit(name, name)?;
            store.set_label(name, "diff_id", &diff_id)?;
            Ok(ImportReport {
                snapshot,
                diff_id,
                entries,
                tar_bytes,
            })
        }
        Err(e) => {
            if let Err(cleanup) = store.remove(name) {
                tracing::error!(snapshot = name, error = %cleanup, "could not remove the failed import");
            }
            Err(e)
        }
    }
}

fn apply(tree: &Tree, input: impl Read, limits: &ImportLimits) -> Result<(String, u64, u64)> {
    let mut parents = Parents::default();
    let read = read_layer(input, limits, &mut |entry, path| {
        apply_entry(tree, entry, path, limits, &mut parents)
    })?;
    Ok((read.diff_id, read.entries, read.tar_bytes))
}

/// What reading a layer produced.
#[derive(Clone, Debug)]
pub struct LayerRead {
    /// The sha256 of the uncompressed tar: the layer's diff id.
    pub diff_id: String,
    pub entries: u64,
    /// Bytes of uncompressed tar stream.
    pub tar_bytes: u64,
}

/// One entry of a layer as `read_layer` hands it out.
pub type LayerEntry<'a, 'r> = tar::Entry<'a, Box<dyn Read + 'r>>;

/// Reads the layer `input` (a tar, plain, gzip or zstd) and hands each entry with its raw path
/// to `apply`, in order; every layer applier (imgfs's, the builder's overlayfs one) goes through
/// here, so limits, diff ids and error messages are the same for all. An error of `apply` is
/// reported as `layer entry PATH: ...` (limits as they are).
pub fn read_layer(
    input: impl Read,
    limits: &ImportLimits,
    apply: &mut (dyn FnMut(&mut LayerEntry<'_, '_>, &[u8]) -> Result<()> + Send),
) -> Result<LayerRead> {
    let compressed = std::cell::Cell::new(0u64);
    let mut input = BufReader::with_capacity(
        1 << 20,
        CountingReader {
            inner: input,
            count: &compressed,
        },
    );
    let head = input.fill_buf().map_err(|e| Error::io("read layer", e))?;
    let gzip = head.starts_with(&[0x1f, 0x8b]);
    let zstd = head.starts_with(&ZSTD_MAGIC);
    if !gzip && !zstd {
        return read_tar(input, limits, apply);
    }
    // Inflating is the largest single cost of applying a compressed layer (37% of an `img pull` of
    // incompressible layers, beside 28% for sha256), so it runs on this thread while a second
    // one parses the tar and stores the files. This thread also hashes the diff id: the blocks it
    // inflates are the tar stream, so hashing them here costs no copy and no third thread, and
    // it balances the tar side, which hashes every chunk it stores. Errors of the decoder travel
    // down the channel, so the tar side sees them exactly as it would reading the decoder
    // itself. The channel is bounded: a layer that trips a limit stops the decoder within a few
    // MiB. Blocks the tar side is done with come back on `recycle`, so no block is allocated
    // and zeroed per MiB.
    let (tx, rx) = std::sync::mpsc::sync_channel::<std::io::Result<Vec<u8>>>(4);
    let (recycle_tx, recycle) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::scope(|s| {
        let worker = s.spawn(move || {
            let mut reader = ChannelReader::new(rx, recycle_tx);
            let entries = read_entries(&mut reader, limits, apply)?;
            // The diff id covers the whole stream: drain it, so the inflater reaches its end.
            std::io::copy(&mut reader, &mut std::io::sink())
                .map_err(|e| layer_err("read layer", e))?;
            Ok::<u64, Error>(entries)
        });
        let mut decoder: Box<dyn Read> = if gzip {
            Box::new(MultiGzDecoder::new(input))
        } else {
            match zstd::stream::read::Decoder::with_buffer(input) {
                Ok(d) => Box::new(d),
                Err(e) => Box::new(FailingReader(Some(e))),
            }
        };
        let mut hasher = Sha256::new();
        let mut meter = Meter::new(limits);
        loop {
            let mut buf = recycle.try_recv().unwrap_or_default();
            buf.resize(INFLATE_BLOCK, 0);
            let (filled, error) = read_block(&mut decoder, &mut buf);
            buf.truncate(filled);
            if let Err(e) = meter.feed(&buf, Some(compressed.get())) {
                // As the tar side would see it reading past the limit: nothing of this block.
                let _ = tx.send(Err(e));
                break;
            }
            hasher.update(&buf);
            // The tar side stops taking (an error or a limit) and reports why itself.
            if filled > 0 && tx.send(Ok(buf)).is_err() {
                break;
            }
            if let Some(e) = error {
                let _ = tx.send(Err(e));
                break;
            }
            if filled == 0 {
                break;
            }
        }
        drop(tx);
        let entries = worker.join().expect("the layer worker does not panic")?;
        Ok(LayerRead {
            diff_id: format!("sha256:{}", hex::encode(hasher.finalize())),
            entries,
            tar_bytes: meter.tar_bytes,
        })
    })
}

/// The first bytes of a zstd frame (OCI's `tar+zstd` layers).
pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// A reader whose first read fails with the error a decoder could not be made with.
struct FailingReader(Option<std::io::Error>);

impl Read for FailingReader {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        Err(self
            .0
            .take()
            .unwrap_or_else(|| std::io::Error::other("decoder failed")))
    }
}

/// Bytes handed from the decoder to the tar thread at a time.
const INFLATE_BLOCK: usize = 1 << 20;

/// Reads until `buf` is full, the stream ends or it fails: the bytes read, and the error that
/// stopped it (after those bytes; a gzip CRC error comes after all the data).
fn read_block(r: &mut impl Read, buf: &mut [u8]) -> (usize, Option<std::io::Error>) {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return (filled, Some(e)),
        }
    }
    (filled, None)
}

/// The receiving end of the decoder thread as a `Read`.
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    /// Where used blocks go back to the decoder thread.
    recycle: std::sync::mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
}

impl ChannelReader {
    fn new(
        rx: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
        recycle: std::sync::mpsc::Sender<Vec<u8>>,
    ) -> ChannelReader {
        ChannelReader {
            rx,
            recycle,
            buf: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.rx.recv() {
                Ok(Ok(buf)) => {
                    let used = std::mem::replace(&mut self.buf, buf);
                    // The decoder may be gone (done or stopped): then the block is just freed.
                    let _ = self.recycle.send(used);
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                // The decoder is done: end of stream.
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// `read_layer` on an uncompressed tar stream.
fn read_tar(
    stream: impl Read,
    limits: &ImportLimits,
    apply: &mut (dyn FnMut(&mut LayerEntry<'_, '_>, &[u8]) -> Result<()> + Send),
) -> Result<LayerRead> {
    let metered = MeteredReader {
        inner: stream,
        meter: Meter::new(limits),
    };
    let mut hashing = HashingReader::new(metered);
    let entries = read_entries(&mut hashing, limits, apply)?;
    // The diff id covers the whole stream, including the end-of-archive blocks and any padding.
    std::io::copy(&mut hashing, &mut std::io::sink()).map_err(|e| layer_err("read layer", e))?;
    let (diff_id, tar_bytes) = hashing.finish();
    Ok(LayerRead {
        diff_id,
        entries,
        tar_bytes,
    })
}

/// Hands each entry of the tar `stream` to `apply`; returns how many there were. Stops at the
/// end-of-archive blocks: the caller reads what follows, for the diff id.
fn read_entries(
    stream: &mut dyn Read,
    limits: &ImportLimits,
    apply: &mut (dyn FnMut(&mut LayerEntry<'_, '_>, &[u8]) -> Result<()> + Send),
) -> Result<u64> {
    let mut entries = 0u64;
    let erased: Box<dyn Read + '_> = Box::new(stream);
    let mut archive = tar::Archive::new(erased);
    let iter = archive.entries().map_err(|e| layer_err("read layer", e))?;
    for entry in iter {
        let mut entry = entry.map_err(|e| layer_err("read layer", e))?;
        entries += 1;
        if entries > limits.max_entries {
            return Err(limits.too_many_entries());
        }
        let mut path = entry.path_bytes().into_owned();
        let sparse = super::paxsparse::pax_sparse(&mut entry).map_err(|e| {
            Error::Layer(format!(
                "layer entry {}: {e}",
                String::from_utf8_lossy(&path)
            ))
        })?;
        if let Some(name) = sparse.and_then(|s| s.name) {
            path = name;
        }
        apply(&mut entry, &path).map_err(|e| match e {
            Error::Limit(_) => e,
            // An applier that reads entry content through its own I/O error type still
            // hits the byte limit.
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::FileTooLarge => {
                Error::Limit(source.to_string())
            }
            e => Error::Layer(format!(
                "layer entry {}: {e}",
                String::from_utf8_lossy(&path)
            )),
        })?;
    }
    Ok(entries)
}

fn layer_err(what: &str, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::FileTooLarge {
        return Error::Limit(e.to_string());
    }
    let detail = match e.kind() {
        std::io::ErrorKind::UnexpectedEof => "unexpected end of data (truncated layer)".to_string(),
        _ => e.to_string(),
    };
    Error::Layer(format!("{what}: {detail}"))
}

/// Splits an entry path into clean components; refuses `..` and strips a leading `/` or `./`.
/// Every layer applier (imgfs's, the builder's overlayfs one) takes paths through this.
pub fn components(path: &[u8], limits: &ImportLimits) -> Result<Vec<Vec<u8>>> {
    if path.len() > limits.max_path {
        return Err(limits.path_too_long(path.len()));
    }
    let mut out = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(Error::Invalid("path has a `..` component".into())),
            c => out.push(c.to_vec()),
        }
    }
    check_whiteouts(path, &out)?;
    Ok(out)
}

/// The image spec's whiteout rules: a whiteout is a file, so only the last component may be
/// one; it names a file (`.wh.`, `.wh..` and `.wh...` name nothing or `.` and `..`); and of the
/// `.wh..wh.` names only the opaque marker means anything (AUFS's `.wh..wh.plnk` and the like
/// are refused, not stored).
fn check_whiteouts(path: &[u8], comps: &[Vec<u8>]) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::Invalid(format!(
            "layer entry {}: {why}",
            String::from_utf8_lossy(path)
        )))
    };
    for (i, c) in comps.iter().enumerate() {
        let Some(target) = c.strip_prefix(WHITEOUT_PREFIX) else {
            continue;
        };
        if i + 1 < comps.len() {
            return bad("a whiteout cannot be a directory");
        }
        if c.as_slice() == OPAQUE_MARKER {
            continue;
        }
        if matches!(target, b"" | b"." | b"..") {
            return bad("the whiteout names no file");
        }
        if target.starts_with(WHITEOUT_PREFIX) {
            return bad("unknown whiteout (only .wh..wh..opq is defined)");
        }
    }
    Ok(())
}

/// Finds the directory that holds the last component, creating missing parents as `tar -x` does.
/// A parent that is a symlink is followed inside the tree, and a missing target is created.
/// Directories already resolved in this import, by path: most entries of a layer share their
/// parent with the entry before. Cleared whenever an entry removes anything, which is the only
/// way a resolved path can come to mean something else.
#[derive(Default)]
struct Parents(HashMap<Vec<u8>, Ino>);

impl Parents {
    fn get(&mut self, tree: &Tree, dirs: &[Vec<u8>]) -> Result<Ino> {
        let path = join(dirs);
        if let Some(ino) = self.0.get(&path) {
            return Ok(*ino);
        }
        let ino = parent_dir(tree, dirs)?;
        self.0.insert(path, ino);
        Ok(ino)
    }

    fn invalidate(&mut self) {
        self.0.clear();
    }
}

fn parent_dir(tree: &Tree, dirs: &[Vec<u8>]) -> Result<Ino> {
    let mut budget = 40;
    let comps: Vec<&[u8]> = dirs.iter().map(Vec::as_slice).collect();
    ensure_dir(tree, Ino::ROOT, &comps, &mut budget)
}

fn ensure_dir(tree: &Tree, start: Ino, comps: &[&[u8]], budget: &mut u32) -> Result<Ino> {
    let mut at = start;
    for &c in comps {
        match c {
            b"" | b"." => continue,
            b".." => {
                at = tree.parent_of(at)?;
                continue;
            }
            _ => {}
        }
        at = match tree.entry(at, c)? {
            None => tree.create_node(
                at,
                c,
                Inode::new(FileKind::Dir, 0o755, 0, 0, Timestamp::now()),
            )?,
            Some((ino, FileKind::Dir)) => ino,
            Some((ino, FileKind::Symlink)) => {
                *budget = budget
                    .checked_sub(1)
                    .ok_or_else(|| Error::Loop(String::from_utf8_lossy(c).into_owned()))?;
                let target = tree.readlink(ino)?;
                let base = if target.starts_with(b"/") {
                    Ino::ROOT
                } else {
                    at
                };
                let parts: Vec<&[u8]> = target.split(|&b| b == b'/').collect();
                ensure_dir(tree, base, &parts, budget)?
            }
            Some(_) => return Err(Error::NotDir(String::from_utf8_lossy(c).into_owned())),
        };
    }
    Ok(at)
}

fn apply_entry<R: Read>(
    tree: &Tree,
    entry: &mut tar::Entry<'_, R>,
    path: &[u8],
    limits: &ImportLimits,
    parents: &mut Parents,
) -> Result<()> {
    let comps = components(path, limits)?;
    let Some((name, dirs)) = comps.split_last() else {
        // The root directory itself: take its attributes.
        let header = entry.header();
        if header.entry_type().is_dir() {
            let mut root = tree.inode(Ino::ROOT)?;
            set_attrs(&mut root, entry)?;
            tree.put_inode(Ino::ROOT, &root)?;
        }
        return Ok(());
    };
    let dir = parents.get(tree, dirs)?;

    if name.as_slice() == OPAQUE_MARKER {
        if dir == Ino::ROOT {
            // An opaque root hides everything of the parent snapshot.
            for e in tree.readdir(Ino::ROOT)? {
                if !own_entry(tree, Ino::ROOT, &e.name)? {
                    parents.invalidate();
                    tree.remove_any(Ino::ROOT, &e.name)?;
                }
            }
            return Ok(());
        }
        let joined = join(dirs);
        let (pdir, pname) = tree.resolve_parent(&joined)?;
        parents.invalidate();
        tree.make_opaque(pdir, pname)?;
        return Ok(());
    }
    if let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) {
        // A whiteout deletes the name in the lower layers only; one this layer added stays.
        if tree.entry(dir, target)?.is_some() && !own_entry(tree, dir, target)? {
            parents.invalidate();
            tree.remove_any(dir, target)?;
        }
        return Ok(());
    }

    let header = entry.header().clone();
    let kind = match header.entry_type() {
        tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
            FileKind::File
        }
        tar::EntryType::Directory => FileKind::Dir,
        tar::EntryType::Symlink => FileKind::Symlink,
        tar::EntryType::Char => FileKind::CharDev,
        tar::EntryType::Block => FileKind::BlockDev,
        tar::EntryType::Fifo => FileKind::Fifo,
        tar::EntryType::Link => return hard_link(tree, entry, dir, name, limits, parents),
        other => {
            tracing::warn!(entry = %String::from_utf8_lossy(path), kind = ?other, "skipping tar entry of unsupported type");
            return Ok(());
        }
    };

    let existing = tree.entry(dir, name)?;
    if let Some((ino, FileKind::Dir)) = existing
        && kind == FileKind::Dir
    {
        // A directory that exists keeps its contents; the layer only sets its attributes.
        let mut inode = tree.inode(ino)?;
        set_attrs(&mut inode, entry)?;
        return tree.put_inode(ino, &inode);
    }
    if existing.is_some() {
        parents.invalidate();
        tree.remove_any(dir, name)?;
    }
    let mut inode = Inode::new(kind, 0, 0, 0, Timestamp::now());
    set_attrs(&mut inode, entry)?;
    match kind {
        FileKind::Symlink => {
            inode.target = entry
                .link_name_bytes()
                .ok_or_else(|| Error::Invalid("symlink without a target".into()))?
                .into_owned();
        }
        FileKind::CharDev | FileKind::BlockDev => {
            let major = header.device_major().ok().flatten().unwrap_or(0);
            let minor = header.device_minor().ok().flatten().unwrap_or(0);
            inode.rdev = libc::makedev(major, minor);
        }
        _ => {}
    }
    if kind != FileKind::File {
        tree.create_node(dir, name, inode)?;
        return Ok(());
    }
    let (mut content, expected) = file_content(entry, limits)?;
    let (_, written) =
        tree.create_file(dir, name, inode, &mut content, expected, limits.max_bytes)?;
    if written != expected {
        return Err(Error::Layer(format!(
            "truncated: header says {expected} bytes, the layer has {written}"
        )));
    }
    Ok(())
}

/// The content of a regular file's entry and its size: the entry's data, or for a PAX sparse
/// file (which the tar crate hands out as its map and data segments) the file with its holes.
/// A file larger than `limits.max_bytes` is refused before any of it is read: a sparse one
/// (GNU or PAX) costs its whole size in zeros to read, though its layer may be tiny.
pub fn file_content<'e, R: Read + 'e>(
    entry: &'e mut tar::Entry<'_, R>,
    limits: &ImportLimits,
) -> Result<(Box<dyn Read + 'e>, u64)> {
    let stored = entry.size();
    let (content, size): (Box<dyn Read + 'e>, u64) = match super::paxsparse::pax_sparse(entry)? {
        None => (Box::new(entry), stored),
        Some(s) => {
            let content = super::paxsparse::SparseContent::new(entry, stored, s.realsize)?;
            (Box::new(content), s.realsize)
        }
    };
    if size > limits.max_bytes {
        return Err(Error::Limit(format!(
            "file of {size} bytes, more than {} (limit {})",
            limits.max_bytes, limits.names.bytes
        )));
    }
    Ok((content, size))
}

/// True if the visible version of `name` in `dir` was written by the snapshot being filled.
fn own_entry(tree: &Tree, dir: Ino, name: &[u8]) -> Result<bool> {
    let Some(parent) = tree.record().parent else {
        return Ok(tree.entry(dir, name)?.is_some());
    };
    let parent_rec = tree.store().record(parent)?;
    let parent_chain = tree.store().chain(&parent_rec)?;
    let below = tree
        .store()
        .meta()
        .visible(&crate::meta::key::dentry_base(dir, name), &parent_chain)?;
    let now = tree.entry(dir, name)?;
    let before = match below {
        Some((_, v)) => match crate::records::Dentry::decode(&v)? {
            crate::records::Dentry::Entry { ino, .. } => Some(ino),
            crate::records::Dentry::Deleted => None,
        },
        None => None,
    };
    Ok(now.map(|(ino, _)| ino) != before)
}

fn join(comps: &[Vec<u8>]) -> Vec<u8> {
    comps.join(&b'/')
}

fn hard_link<R: Read>(
    tree: &Tree,
    entry: &tar::Entry<'_, R>,
    dir: Ino,
    name: &[u8],
    limits: &ImportLimits,
    parents: &mut Parents,
) -> Result<()> {
    let target = entry
        .link_name_bytes()
        .ok_or_else(|| Error::Invalid("hard link without a target".into()))?
        .into_owned();
    let tcomps = components(&target, limits)?;
    let shown = String::from_utf8_lossy(&target).into_owned();
    let tino = tree
        .resolve(&join(&tcomps), false)
        .map_err(|_| Error::NotFound(format!("hard link target {shown}")))?;
    if tree.inode(tino)?.kind == FileKind::Dir {
        return Err(Error::NotPermitted(format!(
            "hard link to directory {shown}"
        )));
    }
    if let Some((ino, _)) = tree.entry(dir, name)? {
        if ino == tino {
            return Ok(());
        }
        parents.invalidate();
        tree.remove_any(dir, name)?;
    }
    // A link made by the layer must not give the directory the import's time: the layer set
    // the directory's times from its own header, as it does for every other entry type.
    let times = tree.inode(dir)?;
    tree.link(tino, dir, name)?;
    let mut inode = tree.inode(dir)?;
    inode.mtime = times.mtime;
    inode.ctime = times.ctime;
    tree.put_inode(dir, &inode)?;
    Ok(())
}

/// What a tar entry says of its file beyond type and content: mode, owner, times and extended
/// attributes, from its header and PAX records. Both backends' appliers read entries with it.
pub(crate) struct EntryAttrs {
    /// Permission bits with setuid, setgid and sticky.
    pub(crate) perm: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) mtime: Timestamp,
    /// PAX `atime`, else the header's mtime.
    pub(crate) atime: Timestamp,
    /// `SCHILY.xattr.*` records, in the order given.
    pub(crate) xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

pub(crate) fn entry_attrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<EntryAttrs> {
    let h = entry.header();
    let old = h.as_old();
    // An all-NUL or all-space numeric field means zero, as Go's archive/tar reads it.
    let num = |parsed: std::io::Result<u64>, raw: &[u8], what: &str| -> Result<u64> {
        parsed.or_else(|_| {
            if raw.iter().all(|&b| b == 0 || b == b' ') {
                Ok(0)
            } else {
                Err(Error::Invalid(format!("bad {what} in tar header")))
            }
        })
    };
    let perm = num(h.mode().map(u64::from), &old.mode, "mode")? as u32 & 0o7777;
    let uid = u32::try_from(num(h.uid(), &old.uid, "uid")?)
        .map_err(|_| Error::Invalid("uid over 2^32".into()))?;
    let gid = u32::try_from(num(h.gid(), &old.gid, "gid")?)
        .map_err(|_| Error::Invalid("gid over 2^32".into()))?;
    let mtime = Timestamp::from_secs(num(h.mtime(), &old.mtime, "mtime")? as i64);
    let mut a = EntryAttrs {
        perm,
        uid,
        gid,
        mtime,
        atime: mtime,
        xattrs: Vec::new(),
    };
    if let Some(exts) = entry
        .pax_extensions()
        .map_err(|e| Error::Invalid(format!("PAX header: {e}")))?
    {
        for ext in exts {
            let ext = ext.map_err(|e| Error::Invalid(format!("PAX header: {e}")))?;
            let key = ext.key_bytes();
            if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                a.xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
            } else if key == b"mtime" {
                if let Some(t) = parse_pax_time(ext.value_bytes()) {
                    a.mtime = t;
                }
            } else if key == b"atime"
                && let Some(t) = parse_pax_time(ext.value_bytes())
            {
                a.atime = t;
            }
        }
    }
    Ok(a)
}

/// Sets mode, owner, times and extended attributes from a tar entry.
fn set_attrs<R: Read>(inode: &mut Inode, entry: &mut tar::Entry<'_, R>) -> Result<()> {
    let a = entry_attrs(entry)?;
    inode.perm = a.perm;
    inode.uid = a.uid;
    inode.gid = a.gid;
    inode.mtime = a.mtime;
    inode.ctime = a.mtime;
    inode.atime = a.atime;
    for (name, value) in &a.xattrs {
        inode.set_xattr(name, value);
    }
    Ok(())
}

/// Parses a PAX time (`seconds[.fraction]`).
fn parse_pax_time(v: &[u8]) -> Option<Timestamp> {
    let s = std::str::from_utf8(v).ok()?;
    let (sec, frac) = s.split_once('.').unwrap_or((s, ""));
    let sec: i64 = sec.parse().ok()?;
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let nsec: u32 = if frac.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    Some(Timestamp { sec, nsec })
}

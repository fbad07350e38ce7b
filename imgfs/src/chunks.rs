//! The chunk store: content addressing (chunk records with reference counts, pack records) over
//! append-only pack files holding chunk bytes, read through shared memory maps. The only module
//! that maps memory.
//!
//! Chunks are appended to the current pack and never modified in place. Each pack is mapped once
//! at its maximum size, so growing it needs no remap; a mapping never reaches past the bytes a
//! record points at, because pack files are only truncated at writer open, before anything is
//! mapped, and only past their synced length (docs/imgfs-format.md). Freed chunks are punched out
//! of their pack with `FALLOC_FL_PUNCH_HOLE`, which keeps the size, so a mapping reads zeros there
//! instead of faulting.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::ops::Deref;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use memmap2::{Mmap, MmapOptions};

use crate::error::{Error, IoContext, Result};
use crate::ids::{ChunkDigest, PackId};
use crate::meta::key::Key;
use crate::meta::{Batch, MetaDb, key};
use crate::records::{ChunkRecord, PackRecord};
use crate::space::{DATA_HEADROOM, Space};

/// The largest a pack grows before appends move to a new one.
pub const PACK_MAX: u64 = 1 << 30;

struct Pack {
    file: File,
    map: Mmap,
}

struct Writer {
    id: PackId,
    len: u64,
    /// Where the last `start_writeback` of this pack ended.
    kicked: u64,
    /// The id the next new pack (shared or object) gets.
    next: u32,
}

/// Appended bytes after which the kernel is told to start writing them out, so the `sync` of a
/// commit finds little left to write: a 50 MB layer import otherwise waits ~50 ms for its whole
/// pack tail at commit, on the critical path of a pull.
pub(crate) const WRITEBACK_STEP: u64 = 8 << 20;

/// Asks the kernel to start writing `len` bytes of `file` from `offset` to disk, without waiting
/// and without any durability promise (`sync` still makes them durable). Failure only costs
/// time, so it is ignored.
pub(crate) fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range only reads its integer arguments; an invalid fd is an error
    // return, not undefined behaviour.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Raises this process's soft limit of open files to its hard limit. A pack keeps its file open
/// while it is mapped, and every file of 1 MiB or more that a layer import stores has a pack of
/// its own, so importing or reading an image with more than ~1000 such files would fail with
/// EMFILE under the usual soft limit of 1024. Called by the `imgfs` and `img` binaries at start
/// (a library should not change its process's limits by itself).
pub fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::debug!("cannot raise the open-file limit from {soft} to {hard}: {e}");
    }
}

/// The pack files of one store.
pub struct PackStore {
    dir: PathBuf,
    read_only: bool,
    packs: RwLock<HashMap<PackId, Arc<Pack>>>,
    writer: Mutex<Option<Writer>>,
    /// Packs appended to since the last `sync`.
    dirty: Mutex<HashSet<PackId>>,
    /// Object packs: one file's content each, at the file's offsets (`begin_object`).
    objects: Mutex<HashSet<PackId>>,
    /// The free space of the packs' file system: appends leave `DATA_HEADROOM` of it.
    space: Space,
}

/// A chunk's bytes, borrowed from the pack's memory map.
pub struct ChunkBytes {
    pack: Arc<Pack>,
    offset: usize,
    len: usize,
}

impl Deref for ChunkBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.pack.map[self.offset..self.offset + self.len]
    }
}

fn pack_path(dir: &Path, id: PackId) -> PathBuf {
    dir.join(format!("{:08}.pack", id.0))
}

impl PackStore {
    /// Opens the pack directory. For a writer, `known` holds the record of every pack the
    /// metadata knows: files it does not know are deleted and longer files are cut back to what
    /// was synced, which drops the chunks of imports that never committed.
    pub fn open(
        dir: &Path,
        read_only: bool,
        known: &BTreeMap<PackId, PackRecord>,
    ) -> Result<PackStore> {
        let store = PackStore {
            dir: dir.to_path_buf(),
            read_only,
            packs: RwLock::new(HashMap::new()),
            writer: Mutex::new(None),
            dirty: Mutex::new(HashSet::new()),
            objects: Mutex::new(
                known
                    .iter()
                    .filter(|(_, r)| r.object)
                    .map(|(id, _)| *id)
                    .collect(),
            ),
            space: Space::new(dir),
        };
        if read_only {
            return Ok(store);
        }
        std::fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?;
        for entry in std::fs::read_dir(dir).ctx(|| format!("read {}", dir.display()))? {
            let entry = entry.ctx(|| format!("read {}", dir.display()))?;
            let name = entry.file_name();
            let id = name
                .to_str()
                .and_then(|n| n.strip_suffix(".pack"))
                .and_then(|n| n.parse::<u32>().ok())
                .map(PackId);
            let path = entry.path();
            match id.and_then(|id| known.get(&id)).map(|r| r.synced_len) {
                None => std::fs::remove_file(&path).ctx(|| format!("remove {}", path.display()))?,
                Some(len) => {
                    // A stat per pack, not an open: a store holds hundreds.
                    let actual = entry
                        .metadata()
                        .ctx(|| format!("stat {}", path.display()))?
                        .len();
                    if actual > len {
                        tracing::info!(pack = %path.display(), actual, synced = len, "dropping unsynced pack tail");
                        let f = OpenOptions::new()
                            .write(true)
                            .open(&path)
                            .ctx(|| format!("open {}", path.display()))?;
                        f.set_len(len)
                            .ctx(|| format!("truncate {}", path.display()))?;
                        f.sync_all().ctx(|| format!("sync {}", path.display()))?;
                    } else if actual < len {
                        return Err(Error::Corrupt(format!(
                            "{} is {actual} bytes but {len} were synced",
                            path.display()
                        )));
                    }
                }
            }
        }
        // Appends resume in the newest shared pack if it has room; object packs are never
        // appended to again.
        let next = known.keys().next_back().map_or(1, |id| id.0 + 1);
        let last = known
            .iter()
            .rev()
            .find(|(_, r)| !r.object)
            .map(|(id, r)| (*id, r.synced_len));
        *store.writer.lock().expect("poisoned") = Some(match last {
            Some((id, len)) if len < PACK_MAX / 2 => Writer {
                id,
                len,
                kicked: len,
                next,
            },
            _ => Writer {
                id: PackId(next),
                len: 0,
                kicked: 0,
                next: next + 1,
            },
        });
        Ok(store)
    }

    fn pack(&self, id: PackId) -> Result<Arc<Pack>> {
        if let Some(p) = self.packs.read().expect("poisoned").get(&id) {
            return Ok(p.clone());
        }
        let mut packs = self.packs.write().expect("poisoned");
        if let Some(p) = packs.get(&id) {
            return Ok(p.clone());
        }
        let path = pack_path(&self.dir, id);
        let file = OpenOptions::new()
            .read(true)
            .write(!self.read_only)
            .create(!self.read_only)
            .truncate(false)
            .open(&path)
            .ctx(|| format!("open pack {}", path.display()))?;
        // SAFETY: pack bytes that a record points at are never truncated or rewritten while the
        // store is open (module docs), so the mapping stays valid for every read we make.
        let map = unsafe { MmapOptions::new().len(PACK_MAX as usize).map(&file) }
            .ctx(|| format!("map pack {}", path.display()))?;
        let pack = Arc::new(Pack { file, map });
        packs.insert(id, pack.clone());
        Ok(pack)
    }

    /// Appends a chunk and returns where it landed. Not durable until `sync`.
    pub fn append(&self, data: &[u8]) -> Result<(PackId, u64)> {
        if self.read_only {
            return Err(Error::ReadOnly("chunk store".into()));
        }
        let mut guard = self.writer.lock().expect("poisoned");
        let w = guard.as_mut().expect("writer exists in a writable store");
        if w.len + data.len() as u64 > PACK_MAX {
            *w = Writer {
                id: PackId(w.next),
                len: 0,
                kicked: 0,
                next: w.next + 1,
            };
        }
        let pack = self.pack(w.id)?;
        self.take_space(data.len(), || format!("appending to pack {}", w.id.0))?;
        pack.file
            .write_all_at(data, w.len)
            .ctx(|| format!("append to pack {}", w.id.0))?;
        let at = (w.id, w.len);
        w.len += data.len() as u64;
        if w.len - w.kicked >= WRITEBACK_STEP {
            start_writeback(&pack.file, w.kicked, w.len - w.kicked);
            w.kicked = w.len;
        }
        self.dirty.lock().expect("poisoned").insert(w.id);
        Ok(at)
    }

    /// Fails with `Error::NoSpace` unless `len` more bytes of data leave `DATA_HEADROOM` free
    /// for the metadata that records them (`crate::space`).
    pub(crate) fn take_space(&self, len: usize, doing: impl FnOnce() -> String) -> Result<()> {
        self.space.take(len as u64, DATA_HEADROOM, doing)
    }

    /// Starts an object pack: a new pack that will hold one file's content at the file's own
    /// offsets (`write_object`), so that its bytes can back the file directly (FUSE passthrough).
    /// Nothing else is ever appended to it. Not durable until `sync`.
    pub fn begin_object(&self) -> Result<PackId> {
        if self.read_only {
            return Err(Error::ReadOnly("chunk store".into()));
        }
        let id = {
            let mut guard = self.writer.lock().expect("poisoned");
            let w = guard.as_mut().expect("writer exists in a writable store");
            w.next += 1;
            PackId(w.next - 1)
        };
        self.pack(id)?;
        self.objects.lock().expect("poisoned").insert(id);
        self.dirty.lock().expect("poisoned").insert(id);
        Ok(id)
    }

    /// Writes a chunk of an object pack at `offset`. Not durable until `sync`.
    pub fn write_object(&self, id: PackId, offset: u64, data: &[u8]) -> Result<()> {
        let pack = self.pack(id)?;
        self.take_space(data.len(), || format!("writing object pack {}", id.0))?;
        pack.file
            .write_all_at(data, offset)
            .ctx(|| format!("write object pack {}", id.0))?;
        let end = offset + data.len() as u64;
        if end / WRITEBACK_STEP != offset / WRITEBACK_STEP {
            let from = offset / WRITEBACK_STEP * WRITEBACK_STEP;
            start_writeback(&pack.file, from, end - from);
        }
        Ok(())
    }

    /// Ends an object pack at the file's size (its last chunks may be holes), or deletes it when
    /// nothing was written to it (every chunk was stored already).
    pub fn finish_object(&self, id: PackId, len: u64, used: bool) -> Result<()> {
        let pack = self.pack(id)?;
        if used {
            return pack
                .file
                .set_len(len)
                .ctx(|| format!("size object pack {}", id.0));
        }
        self.objects.lock().expect("poisoned").remove(&id);
        self.dirty.lock().expect("poisoned").remove(&id);
        self.packs.write().expect("poisoned").remove(&id);
        let path = pack_path(&self.dir, id);
        std::fs::remove_file(&path).ctx(|| format!("remove {}", path.display()))
    }

    /// Whether `id` is an object pack.
    pub fn is_object(&self, id: PackId) -> bool {
        self.objects.lock().expect("poisoned").contains(&id)
    }

    /// The length of object pack `id`; `None` if it is not one.
    pub fn object_len(&self, id: PackId) -> Result<Option<u64>> {
        if !self.is_object(id) {
            return Ok(None);
        }
        let pack = self.pack(id)?;
        let len = pack
            .file
            .metadata()
            .ctx(|| format!("stat pack {}", id.0))?
            .len();
        Ok(Some(len))
    }

    /// Opens a pack file read-only (to hand it to the kernel as a passthrough backing file).
    pub fn open_file(&self, id: PackId) -> Result<File> {
        let path = pack_path(&self.dir, id);
        File::open(&path).ctx(|| format!("open pack {}", path.display()))
    }

    /// Reads a chunk through the memory map.
    pub fn read(&self, pack: PackId, offset: u64, len: u32) -> Result<ChunkBytes> {
        let p = self.pack(pack)?;
        if offset + len as u64 > PACK_MAX {
            return Err(Error::Corrupt(format!(
                "chunk at {}:{offset} runs past the pack",
                pack.0
            )));
        }
        Ok(ChunkBytes {
            pack: p,
            offset: offset as usize,
            len: len as usize,
        })
    }

    /// Makes every append so far durable; returns the synced length of each pack it synced.
    pub fn sync(&self) -> Result<Vec<(PackId, u64)>> {
        let dirty: Vec<PackId> = self.dirty.lock().expect("poisoned").drain().collect();
        let mut out = Vec::with_capacity(dirty.len());
        for id in dirty {
            let pack = self.pack(id)?;
            pack.file
                .sync_data()
                .ctx(|| format!("sync pack {}", id.0))?;
            let len = pack
                .file
                .metadata()
                .ctx(|| format!("stat pack {}", id.0))?
                .len();
            out.push((id, len));
        }
        Ok(out)
    }

    /// Frees the space of a chunk nothing refers to any more. Only whole file-system blocks inside
    /// the chunk are released; the partial blocks at its ends stay until the pack is deleted.
    pub fn punch(&self, pack: PackId, offset: u64, len: u32) -> Result<()> {
        const BLOCK: u64 = 4096;
        let start = offset.div_ceil(BLOCK) * BLOCK;
        let end = (offset + len as u64) / BLOCK * BLOCK;
        if end <= start {
            return Ok(());
        }
        let p = self.pack(pack)?;
        nix::fcntl::fallocate(
            &p.file,
            nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            start as i64,
            (end - start) as i64,
        )
        .map_err(|e| Error::io(format!("free space in pack {}", pack.0), e.into()))
    }

    /// Deletes a pack that holds no live chunk, unless appends are still going to it.
    pub fn remove_pack(&self, pack: PackId) -> Result<bool> {
        if self
            .writer
            .lock()
            .expect("poisoned")
            .as_ref()
            .is_some_and(|w| w.id == pack)
        {
            return Ok(false);
        }
        self.packs.write().expect("poisoned").remove(&pack);
        let path = pack_path(&self.dir, pack);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(Error::io(format!("remove {}", path.display()), e)),
        }
    }

    /// The path of a pack file (for fsck, which reads packs without mapping them and names them in
    /// its reports).
    pub(crate) fn path(&self, pack: PackId) -> PathBuf {
        pack_path(&self.dir, pack)
    }

    /// The pack files on disk with their sizes (for fsck).
    pub fn files(&self) -> Result<Vec<(PackId, u64)>> {
        let mut out = Vec::new();
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io(format!("read {}", self.dir.display()), e)),
        };
        for entry in rd {
            let entry = entry.ctx(|| format!("read {}", self.dir.display()))?;
            if let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".pack"))
                .and_then(|n| n.parse().ok())
            {
                let len = entry
                    .metadata()
                    .ctx(|| format!("stat {:?}", entry.path()))?
                    .len();
                out.push((PackId(id), len));
            }
        }
        out.sort();
        Ok(out)
    }
}

/// The content-addressed chunk store of one store: each distinct chunk is stored once, in a pack,
/// under its digest (`C` records, with the number of stored extent versions naming it), and each
/// pack has a `P` record (synced length, live bytes). Chunk and pack records change only here
/// and in fsck's repair.
pub(crate) struct ChunkStore {
    meta: Arc<MetaDb>,
    packs: PackStore,
    /// Serialises every read-modify-write of chunk records (reference counts), pack records and
    /// snapshot records. File operations on different snapshots never take it except to hash data.
    lock: Mutex<()>,
}

impl ChunkStore {
    /// Opens the chunk store of a store whose metadata is `meta`, with its packs in `dir`. For a
    /// writer, pack files the metadata does not know are deleted and longer ones cut back to what
    /// was synced (`PackStore::open`).
    pub(crate) fn open(meta: Arc<MetaDb>, dir: &Path, read_only: bool) -> Result<ChunkStore> {
        let mut known = BTreeMap::new();
        let mut scan = meta.prefix(&[key::PACK]);
        while let Some((k, v)) = scan.next_entry()? {
            let Some(Key::Pack(id)) = Key::parse(k) else {
                return Err(Error::Corrupt(format!(
                    "pack key {} does not decode",
                    hex::encode(k)
                )));
            };
            known.insert(id, PackRecord::decode(v)?);
        }
        drop(scan);
        let packs = PackStore::open(dir, read_only, &known)?;
        Ok(ChunkStore {
            meta,
            packs,
            lock: Mutex::new(()),
        })
    }

    /// Takes the store-wide lock that every change of chunk, pack and snapshot records holds.
    pub(crate) fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().expect("poisoned")
    }

    /// The pack files (for object packs: `Tree::fill` and FUSE passthrough; and fsck).
    pub(crate) fn packs(&self) -> &PackStore {
        &self.packs
    }

    fn pack_record(&self, pack: PackId) -> Result<PackRecord> {
        Ok(match self.meta.get(&key::pack(pack))? {
            Some(v) => PackRecord::decode(&v)?,
            None => PackRecord::default(),
        })
    }

    /// Adds reference count changes to `b`; returns the chunks that drop to zero (their records
    /// are deleted in `b`, their space is freed by `release_chunks` once `b` is written).
    pub(crate) fn unref_chunks(
        &self,
        b: &mut Batch,
        unref: &HashMap<ChunkDigest, u64>,
    ) -> Result<Vec<ChunkRecord>> {
        let mut freed = Vec::new();
        let mut live_delta: HashMap<PackId, u64> = HashMap::new();
        for (digest, n) in unref {
            let k = key::chunk(digest);
            let Some(v) = self.meta.get(&k)? else {
                return Err(Error::Corrupt(format!(
                    "extent refers to missing chunk {digest}"
                )));
            };
            let mut rec = ChunkRecord::decode(&v)?;
            if rec.refs <= *n {
                b.delete(&k);
                *live_delta.entry(rec.pack).or_default() += rec.len as u64;
                freed.push(rec);
            } else {
                rec.refs -= n;
                b.put(&k, &rec.encode());
            }
        }
        for (pack, d) in live_delta {
            let mut rec = self.pack_record(pack)?;
            rec.live_bytes = rec.live_bytes.saturating_sub(d);
            b.put(&key::pack(pack), &rec.encode());
        }
        Ok(freed)
    }

    /// Frees the space of chunks whose records are gone, and deletes packs left empty.
    pub(crate) fn release_chunks(&self, freed: &[ChunkRecord]) -> Result<()> {
        let mut packs = HashSet::new();
        for c in freed {
            self.packs.punch(c.pack, c.offset, c.len)?;
            packs.insert(c.pack);
        }
        for pack in packs {
            let rec = self.pack_record(pack)?;
            if rec.live_bytes == 0 && self.packs.remove_pack(pack)? {
                let mut b = Batch::default();
                b.delete(&key::pack(pack));
                self.meta.write_to_free(b, false)?;
            }
        }
        Ok(())
    }

    /// Stores a chunk (once per distinct content) and counts one more reference to it. Caller
    /// holds `lock`; `pending` carries reference changes not yet written in `b`.
    pub(crate) fn put_chunk(
        &self,
        data: &[u8],
        pending: &mut HashMap<ChunkDigest, ChunkRecord>,
        live: &mut HashMap<PackId, u64>,
    ) -> Result<ChunkDigest> {
        Ok(self.put_chunk_at(data, None, pending, live)?.0)
    }

    /// `put_chunk`, writing new content at `object` (an object pack and offset) instead of
    /// appending it to the shared pack. Also returns where the chunk's stored copy is.
    pub(crate) fn put_chunk_at(
        &self,
        data: &[u8],
        object: Option<(PackId, u64)>,
        pending: &mut HashMap<ChunkDigest, ChunkRecord>,
        live: &mut HashMap<PackId, u64>,
    ) -> Result<(ChunkDigest, PackId, u64)> {
        let digest = ChunkDigest::of(data);
        if let Some(rec) = pending.get_mut(&digest) {
            rec.refs += 1;
            return Ok((digest, rec.pack, rec.offset));
        }
        if let Some(v) = self.meta.get(&key::chunk(&digest))? {
            let mut rec = ChunkRecord::decode(&v)?;
            rec.refs += 1;
            pending.insert(digest, rec);
            return Ok((digest, rec.pack, rec.offset));
        }
        let (pack, offset) = match object {
            Some((pack, offset)) => {
                self.packs.write_object(pack, offset, data)?;
                (pack, offset)
            }
            None => self.packs.append(data)?,
        };
        *live.entry(pack).or_default() += data.len() as u64;
        pending.insert(
            digest,
            ChunkRecord {
                pack,
                offset,
                len: data.len() as u32,
                refs: 1,
            },
        );
        Ok((digest, pack, offset))
    }

    /// Writes the chunk records and pack live-byte counts that `put_chunk` accumulated. With
    /// `sync`, first fsyncs every pack appended to and records its synced length too: a batch that
    /// names new chunk bytes may only be written after they are durable. Each pack record is
    /// written once: of two puts of a key in one batch only the last survives.
    pub(crate) fn flush_chunks(
        &self,
        b: &mut Batch,
        pending: HashMap<ChunkDigest, ChunkRecord>,
        live: HashMap<PackId, u64>,
        sync: bool,
    ) -> Result<()> {
        for (digest, rec) in pending {
            b.put(&key::chunk(&digest), &rec.encode());
        }
        let synced: HashMap<PackId, u64> = if sync {
            self.packs.sync()?.into_iter().collect()
        } else {
            HashMap::new()
        };
        let touched: BTreeSet<PackId> = live.keys().chain(synced.keys()).copied().collect();
        for pack in touched {
            let mut rec = self.pack_record(pack)?;
            rec.live_bytes += live.get(&pack).copied().unwrap_or(0);
            rec.object = self.packs.is_object(pack);
            if let Some(&len) = synced.get(&pack) {
                rec.synced_len = len;
            }
            b.put(&key::pack(pack), &rec.encode());
        }
        Ok(())
    }

    /// Reads a stored chunk.
    pub(crate) fn chunk(&self, digest: &ChunkDigest) -> Result<(ChunkRecord, ChunkBytes)> {
        let v = self
            .meta
            .get(&key::chunk(digest))?
            .ok_or_else(|| Error::Corrupt(format!("missing chunk {digest}")))?;
        let rec = ChunkRecord::decode(&v)?;
        let bytes = self.packs.read(rec.pack, rec.offset, rec.len)?;
        Ok((rec, bytes))
    }
}

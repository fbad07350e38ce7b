//! The values stored in the metadata database and their binary encoding (see docs/imgfs-format.md).
//!
//! Every record starts with a format byte so that a later version can change a layout without
//! rewriting the store. Integers are little-endian inside values (keys are big-endian, for order).

use crate::error::{Error, Result};
use crate::ids::{ChunkDigest, DataId, Ino, PackId, SnapshotId};

/// The type of an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    CharDev,
    BlockDev,
    Fifo,
    Socket,
}

impl FileKind {
    fn code(self) -> u8 {
        match self {
            FileKind::File => 1,
            FileKind::Dir => 2,
            FileKind::Symlink => 3,
            FileKind::CharDev => 4,
            FileKind::BlockDev => 5,
            FileKind::Fifo => 6,
            FileKind::Socket => 7,
        }
    }

    fn from_code(code: u8) -> Result<FileKind> {
        Ok(match code {
            1 => FileKind::File,
            2 => FileKind::Dir,
            3 => FileKind::Symlink,
            4 => FileKind::CharDev,
            5 => FileKind::BlockDev,
            6 => FileKind::Fifo,
            7 => FileKind::Socket,
            _ => return Err(Error::Corrupt(format!("unknown file kind {code}"))),
        })
    }

    /// The `S_IFMT` bits of this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileKind::File => libc::S_IFREG,
            FileKind::Dir => libc::S_IFDIR,
            FileKind::Symlink => libc::S_IFLNK,
            FileKind::CharDev => libc::S_IFCHR,
            FileKind::BlockDev => libc::S_IFBLK,
            FileKind::Fifo => libc::S_IFIFO,
            FileKind::Socket => libc::S_IFSOCK,
        }
    }

    /// The kind named by the `S_IFMT` bits of `mode`.
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => FileKind::File,
            libc::S_IFDIR => FileKind::Dir,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFCHR => FileKind::CharDev,
            libc::S_IFBLK => FileKind::BlockDev,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            _ => return None,
        })
    }
}

/// A point in time with nanosecond precision (seconds may be negative, as in tar headers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: u32,
}

impl Timestamp {
    pub fn now() -> Timestamp {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        }
    }

    pub fn from_secs(sec: i64) -> Timestamp {
        Timestamp { sec, nsec: 0 }
    }
}

/// One name that refers to an inode: the directory it is in and the name there.
/// Inodes keep these back-links so a diff can find the paths of a changed inode without a walk.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Link {
    pub dir: Ino,
    pub name: Vec<u8>,
}

/// Everything about an inode except its data chunks and directory entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    pub kind: FileKind,
    /// Permission bits including setuid, setgid and sticky (`mode & 0o7777`).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub rdev: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    /// The file's content (regular files); `None` for an empty file that was never written.
    pub data: Option<DataId>,
    /// Symlink target.
    pub target: Vec<u8>,
    /// The names of this inode: one for a directory, `nlink` for anything else.
    pub links: Vec<Link>,
    /// Number of subdirectories (directories only): their `..` entries count towards `nlink`.
    pub subdirs: u32,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// An object pack holding this file's whole content at the file's own offsets (chunk `i` at
    /// `i * chunk_size`, the pack exactly `size` bytes long), which a FUSE mount can pass reads
    /// through to. Set by layer import; cleared by every change of the content (invariant 7 of
    /// docs/imgfs-format.md).
    pub object: Option<PackId>,
}

impl Inode {
    pub fn new(kind: FileKind, perm: u32, uid: u32, gid: u32, now: Timestamp) -> Inode {
        Inode {
            kind,
            perm: perm & 0o7777,
            uid,
            gid,
            size: 0,
            rdev: 0,
            atime: now,
            mtime: now,
            ctime: now,
            data: None,
            target: Vec::new(),
            links: Vec::new(),
            subdirs: 0,
            xattrs: Vec::new(),
            object: None,
        }
    }

    /// The link count as stat reports it: a directory counts its entry in the parent, its own
    /// `.` and the `..` of each subdirectory.
    pub fn nlink(&self) -> u32 {
        match self.kind {
            FileKind::Dir => 2 + self.subdirs,
            _ => self.links.len() as u32,
        }
    }

    pub fn xattr(&self, name: &[u8]) -> Option<&[u8]> {
        self.xattrs
            .binary_search_by(|(n, _)| n.as_slice().cmp(name))
            .ok()
            .map(|i| self.xattrs[i].1.as_slice())
    }

    pub fn set_xattr(&mut self, name: &[u8], value: &[u8]) {
        match self
            .xattrs
            .binary_search_by(|(n, _)| n.as_slice().cmp(name))
        {
            Ok(i) => self.xattrs[i].1 = value.to_vec(),
            Err(i) => self.xattrs.insert(i, (name.to_vec(), value.to_vec())),
        }
    }

    pub fn remove_xattr(&mut self, name: &[u8]) -> bool {
        match self
            .xattrs
            .binary_search_by(|(n, _)| n.as_slice().cmp(name))
        {
            Ok(i) => {
                self.xattrs.remove(i);
                true
            }
            Err(_) => false,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(96 + self.target.len()));
        w.u8(1);
        w.u8(self.kind.code());
        w.u32(self.perm);
        w.u32(self.uid);
        w.u32(self.gid);
        w.u64(self.size);
        w.u64(self.rdev);
        for t in [self.atime, self.mtime, self.ctime] {
            w.u64(t.sec as u64);
            w.u32(t.nsec);
        }
        w.u64(self.data.map_or(0, |d| d.0));
        w.bytes(&self.target);
        w.u32(self.links.len() as u32);
        for l in &self.links {
            w.u64(l.dir.0);
            w.bytes(&l.name);
        }
        w.u32(self.subdirs);
        w.u32(self.xattrs.len() as u32);
        for (n, v) in &self.xattrs {
            w.bytes(n);
            w.bytes(v);
        }
        // Optional trailer, so records written before object packs existed still decode.
        if let Some(p) = self.object {
            w.u32(p.0);
        }
        w.0
    }

    pub fn decode(buf: &[u8]) -> Result<Inode> {
        let mut r = Reader::new(buf, "inode");
        r.expect_version(1)?;
        let kind = FileKind::from_code(r.u8()?)?;
        let perm = r.u32()?;
        let uid = r.u32()?;
        let gid = r.u32()?;
        let size = r.u64()?;
        let rdev = r.u64()?;
        let mut times = [Timestamp::default(); 3];
        for t in &mut times {
            t.sec = r.u64()? as i64;
            t.nsec = r.u32()?;
        }
        let data = match r.u64()? {
            0 => None,
            d => Some(DataId(d)),
        };
        let target = r.bytes()?.to_vec();
        let nlinks = r.u32()? as usize;
        let mut links = Vec::with_capacity(nlinks.min(64));
        for _ in 0..nlinks {
            let dir = Ino(r.u64()?);
            links.push(Link {
                dir,
                name: r.bytes()?.to_vec(),
            });
        }
        let subdirs = r.u32()?;
        let nx = r.u32()? as usize;
        let mut xattrs = Vec::with_capacity(nx.min(64));
        for _ in 0..nx {
            let n = r.bytes()?.to_vec();
            xattrs.push((n, r.bytes()?.to_vec()));
        }
        let object = if r.buf.is_empty() {
            None
        } else {
            Some(PackId(r.u32()?))
        };
        Ok(Inode {
            kind,
            perm,
            uid,
            gid,
            size,
            rdev,
            atime: times[0],
            mtime: times[1],
            ctime: times[2],
            data,
            target,
            links,
            subdirs,
            xattrs,
            object,
        })
    }
}

/// A directory entry version: the name points at an inode, or is deleted in this snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dentry {
    Entry {
        ino: Ino,
        kind: FileKind,
    },
    /// The name is deleted in this snapshot (a whiteout over an ancestor's entry).
    Deleted,
}

impl Dentry {
    pub fn encode(&self) -> Vec<u8> {
        match *self {
            Dentry::Deleted => vec![0],
            Dentry::Entry { ino, kind } => {
                let mut w = Writer(Vec::with_capacity(10));
                w.u8(kind.code());
                w.u64(ino.0);
                w.0
            }
        }
    }

    pub fn decode(buf: &[u8]) -> Result<Dentry> {
        let mut r = Reader::new(buf, "dentry");
        match r.u8()? {
            0 => Ok(Dentry::Deleted),
            code => Ok(Dentry::Entry {
                kind: FileKind::from_code(code)?,
                ino: Ino(r.u64()?),
            }),
        }
    }
}

/// Where one chunk of a file's content is, in the snapshot that wrote this version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extent {
    /// The chunk reads as zeros (a hole, or cut off by a truncate).
    Zero,
    /// In the chunk store. `len` may be shorter than the chunk size (the file's last chunk).
    Stored { digest: ChunkDigest, len: u32 },
    /// Written in an active snapshot and not yet hashed: its bytes are in slot `slot` of that
    /// snapshot's scratch file, at `slot * chunk_size`.
    Dirty { slot: u64 },
}

impl Extent {
    pub fn encode(&self) -> Vec<u8> {
        match *self {
            Extent::Zero => vec![0],
            Extent::Dirty { slot } => {
                let mut w = Writer(Vec::with_capacity(9));
                w.u8(2);
                w.u64(slot);
                w.0
            }
            Extent::Stored { digest, len } => {
                let mut w = Writer(Vec::with_capacity(37));
                w.u8(1);
                w.0.extend_from_slice(&digest.0);
                w.u32(len);
                w.0
            }
        }
    }

    pub fn decode(buf: &[u8]) -> Result<Extent> {
        let mut r = Reader::new(buf, "extent");
        match r.u8()? {
            0 => Ok(Extent::Zero),
            2 => Ok(Extent::Dirty { slot: r.u64()? }),
            1 => {
                let digest = ChunkDigest(r.array()?);
                Ok(Extent::Stored {
                    digest,
                    len: r.u32()?,
                })
            }
            k => Err(Error::Corrupt(format!("unknown extent kind {k}"))),
        }
    }
}

/// Where a chunk's bytes are, and how many extent versions refer to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRecord {
    pub pack: PackId,
    pub offset: u64,
    pub len: u32,
    pub refs: u64,
}

impl ChunkRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(25));
        w.u8(1);
        w.u32(self.pack.0);
        w.u64(self.offset);
        w.u32(self.len);
        w.u64(self.refs);
        w.0
    }

    pub fn decode(buf: &[u8]) -> Result<ChunkRecord> {
        let mut r = Reader::new(buf, "chunk record");
        r.expect_version(1)?;
        Ok(ChunkRecord {
            pack: PackId(r.u32()?),
            offset: r.u64()?,
            len: r.u32()?,
            refs: r.u64()?,
        })
    }
}

/// The durable state of a pack file: bytes below `synced_len` were fsynced before any record
/// that refers to them was written with a synced batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PackRecord {
    pub synced_len: u64,
    pub live_bytes: u64,
    /// An object pack: one file's content at the file's offsets, never appended to after the
    /// import that wrote it (docs/imgfs-format.md, "Object packs").
    pub object: bool,
}

impl PackRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(17));
        w.u8(1);
        w.u64(self.synced_len);
        w.u64(self.live_bytes);
        if self.object {
            w.u8(1);
        }
        w.0
    }

    pub fn decode(buf: &[u8]) -> Result<PackRecord> {
        let mut r = Reader::new(buf, "pack record");
        r.expect_version(1)?;
        Ok(PackRecord {
            synced_len: r.u64()?,
            live_bytes: r.u64()?,
            object: !r.buf.is_empty() && r.u8()? == 1,
        })
    }
}

/// The life stage of a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotKind {
    /// Writable; becomes `Committed` by commit.
    Active,
    /// Read-only view of its parent (containerd's View).
    View,
    /// Immutable forever.
    Committed,
    /// Being filled by a layer import; rolled back if the store is opened and finds it.
    Importing,
}

/// A snapshot's record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub id: SnapshotId,
    pub parent: Option<SnapshotId>,
    pub kind: SnapshotKind,
    pub name: String,
    pub created: Timestamp,
    /// Number of ancestors (0 for a base snapshot).
    pub depth: u32,
    /// Free-form labels (the builder keeps the layer's diff id here, for example).
    pub labels: Vec<(String, String)>,
}

impl SnapshotRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::new());
        w.u8(1);
        w.u64(self.id.0);
        w.u64(self.parent.map_or(0, |p| p.0));
        w.u8(match self.kind {
            SnapshotKind::Active => 1,
            SnapshotKind::View => 2,
            SnapshotKind::Committed => 3,
            SnapshotKind::Importing => 4,
        });
        w.bytes(self.name.as_bytes());
        w.u64(self.created.sec as u64);
        w.u32(self.created.nsec);
        w.u32(self.depth);
        w.u32(self.labels.len() as u32);
        for (k, v) in &self.labels {
            w.bytes(k.as_bytes());
            w.bytes(v.as_bytes());
        }
        w.0
    }

    pub fn decode(buf: &[u8]) -> Result<SnapshotRecord> {
        let mut r = Reader::new(buf, "snapshot record");
        r.expect_version(1)?;
        let id = SnapshotId(r.u64()?);
        let parent = match r.u64()? {
            0 => None,
            p => Some(SnapshotId(p)),
        };
        let kind = match r.u8()? {
            1 => SnapshotKind::Active,
            2 => SnapshotKind::View,
            3 => SnapshotKind::Committed,
            4 => SnapshotKind::Importing,
            k => return Err(Error::Corrupt(format!("unknown snapshot kind {k}"))),
        };
        let name = r.string()?;
        let created = Timestamp {
            sec: r.u64()? as i64,
            nsec: r.u32()?,
        };
        let depth = r.u32()?;
        let n = r.u32()? as usize;
        let mut labels = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            let k = r.string()?;
            labels.push((k, r.string()?));
        }
        Ok(SnapshotRecord {
            id,
            parent,
            kind,
            name,
            created,
            depth,
            labels,
        })
    }
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Reader<'a> {
        Reader { buf, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(Error::Corrupt(format!("truncated {} record", self.what)));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Result<String> {
        String::from_utf8(self.bytes()?.to_vec())
            .map_err(|_| Error::Corrupt(format!("non-UTF-8 string in {} record", self.what)))
    }
    fn expect_version(&mut self, v: u8) -> Result<()> {
        let got = self.u8()?;
        if got != v {
            return Err(Error::Corrupt(format!(
                "{} record has format {got}, expected {v}",
                self.what
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_round_trips_through_its_encoding() {
        let mut ino = Inode::new(
            FileKind::File,
            0o4755,
            1000,
            65534,
            Timestamp { sec: -5, nsec: 7 },
        );
        ino.size = 1 << 40;
        ino.data = Some(DataId(99));
        ino.links.push(Link {
            dir: Ino(2),
            name: b"a\xffb".to_vec(),
        });
        ino.set_xattr(b"user.b", b"2");
        ino.set_xattr(b"security.capability", b"\x01\x02");
        assert_eq!(Inode::decode(&ino.encode()).unwrap(), ino);
        assert_eq!(ino.xattrs[0].0, b"security.capability");
    }

    #[test]
    fn truncated_records_are_corrupt_not_panics() {
        let enc = Inode::new(FileKind::Dir, 0o755, 0, 0, Timestamp::now()).encode();
        for n in 0..enc.len() {
            assert!(Inode::decode(&enc[..n]).is_err());
        }
    }
}

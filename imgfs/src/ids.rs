//! Newtypes for the identifiers that cross module boundaries: snapshots, inodes, file data, chunks.

use std::fmt;

/// A snapshot's id. Ids are allocated in increasing order, so a child always has a larger id than
/// every one of its ancestors; the key schema relies on this to find the nearest visible version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotId(pub u64);

/// An inode number. Global to a store: unique across all snapshots, and kept by a file across
/// copy-up, commit and remount. The root directory of every tree is `Ino::ROOT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ino(pub u64);

impl Ino {
    /// The root directory of every snapshot (FUSE's root inode number).
    pub const ROOT: Ino = Ino(1);
}

/// Names the content of a regular file. Truncating a file to zero gives it a new `DataId`, which
/// hides every chunk of the old content in O(1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DataId(pub u64);

/// The sha256 of a chunk's bytes: the chunk's address in the chunk store.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkDigest(pub [u8; 32]);

impl ChunkDigest {
    pub fn of(bytes: &[u8]) -> ChunkDigest {
        use sha2::Digest;
        ChunkDigest(sha2::Sha256::digest(bytes).into())
    }
}

impl fmt::Debug for ChunkDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Display for ChunkDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A pack file of the chunk store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PackId(pub u32);

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Ino {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

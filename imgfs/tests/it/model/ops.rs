//! The operations a sequence is made of, and the proptest strategies that generate them.

use std::fmt;

use imgfs::RenameMode;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

use super::CHUNK;

/// Permission bits, printed in octal so that failing sequences read like `ls -l`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct Perm(pub(super) u32);

impl fmt::Debug for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0o{:o}", self.0)
    }
}

/// One step of a sequence. Generated with `Pick`s, which become concrete paths (slash-separated,
/// relative to the tree's root) when the step runs; failures print both.
#[derive(Clone, Debug)]
pub(super) enum Op<P = String> {
    Create {
        path: P,
        perm: Perm,
    },
    Mkdir {
        path: P,
        perm: Perm,
    },
    /// The target is a relative path without `..`, so it cannot leave the plain directory.
    Symlink {
        path: P,
        target: P,
    },
    /// Writes `len` bytes at `offset`; the byte at file position `p` is `fill(seed, p)`.
    Write {
        path: P,
        offset: u64,
        len: usize,
        seed: u8,
    },
    /// Reads up to `len` bytes at `offset` (following a symlink) and compares what comes back.
    Read {
        path: P,
        offset: u64,
        len: u32,
    },
    Truncate {
        path: P,
        size: u64,
    },
    Unlink {
        path: P,
    },
    Rmdir {
        path: P,
    },
    Rename {
        from: P,
        to: P,
        mode: RenameMode,
    },
    Link {
        from: P,
        to: P,
    },
    /// chmod(2), which follows a symlink in the last component.
    Chmod {
        path: P,
        perm: Perm,
    },
    /// lchown(2), which does not.
    Chown {
        path: P,
        uid: u32,
        gid: u32,
    },
    /// setxattr(2), which follows a symlink in the last component: Linux refuses user xattrs on
    /// symlinks in the VFS, before a FUSE file system would be asked.
    SetXattr {
        path: P,
        name: &'static str,
        value: Vec<u8>,
    },
    RemoveXattr {
        path: P,
        name: &'static str,
    },
    /// Commits the active snapshot and continues in a new active child of it.
    Commit,
    /// Closes the store and opens it again, then continues in the same active snapshot.
    Reopen,
}

impl<P> Op<P> {
    /// The same operation on other paths.
    pub(super) fn map<Q>(&self, mut f: impl FnMut(&P) -> Q) -> Op<Q> {
        match self {
            Op::Create { path, perm } => Op::Create {
                path: f(path),
                perm: *perm,
            },
            Op::Mkdir { path, perm } => Op::Mkdir {
                path: f(path),
                perm: *perm,
            },
            Op::Symlink { path, target } => Op::Symlink {
                path: f(path),
                target: f(target),
            },
            Op::Write {
                path,
                offset,
                len,
                seed,
            } => Op::Write {
                path: f(path),
                offset: *offset,
                len: *len,
                seed: *seed,
            },
            Op::Read { path, offset, len } => Op::Read {
                path: f(path),
                offset: *offset,
                len: *len,
            },
            Op::Truncate { path, size } => Op::Truncate {
                path: f(path),
                size: *size,
            },
            Op::Unlink { path } => Op::Unlink { path: f(path) },
            Op::Rmdir { path } => Op::Rmdir { path: f(path) },
            Op::Rename { from, to, mode } => Op::Rename {
                from: f(from),
                to: f(to),
                mode: *mode,
            },
            Op::Link { from, to } => Op::Link {
                from: f(from),
                to: f(to),
            },
            Op::Chmod { path, perm } => Op::Chmod {
                path: f(path),
                perm: *perm,
            },
            Op::Chown { path, uid, gid } => Op::Chown {
                path: f(path),
                uid: *uid,
                gid: *gid,
            },
            Op::SetXattr { path, name, value } => Op::SetXattr {
                path: f(path),
                name,
                value: value.clone(),
            },
            Op::RemoveXattr { path, name } => Op::RemoveXattr {
                path: f(path),
                name,
            },
            Op::Commit => Op::Commit,
            Op::Reopen => Op::Reopen,
        }
    }
}

/// Where a generated operation acts. Most made-up paths name nothing, so most operations pick
/// what they act on from what exists when they run; shrinking then moves towards the first
/// existing path rather than towards a path that fails with ENOENT.
#[derive(Clone)]
pub(super) enum Pick {
    /// A path made up from the names a, b, c and d, up to three deep.
    Path(String),
    /// The `n`-th existing path (modulo how many there are) in name order, the root left out.
    Existing(usize),
    /// `name` in the `n`-th existing directory (modulo how many there are), the root first.
    In(usize, &'static str),
}

impl fmt::Debug for Pick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pick::Path(p) => write!(f, "{p:?}"),
            Pick::Existing(n) => write!(f, "existing#{n}"),
            Pick::In(n, name) => write!(f, "dir#{n}/{name}"),
        }
    }
}

/// The content a write puts at file position `pos`: position-dependent, so that bytes landing at
/// the wrong offset show, and all zeros for seed 0, so that all-zero chunks (stored as holes)
/// come up often.
pub(super) fn fill(seed: u8, pos: u64) -> u8 {
    if seed == 0 {
        0
    } else {
        (pos % 251) as u8 ^ seed
    }
}

fn name() -> impl Strategy<Value = &'static str> {
    select(&["a", "b", "c", "d"][..])
}

fn path() -> impl Strategy<Value = String> {
    // Shallow paths more often: most deep ones name nothing, and failures on them are dull.
    prop_oneof![
        3 => name().prop_map(String::from),
        2 => (name(), name()).prop_map(|(a, b)| format!("{a}/{b}")),
        1 => (name(), name(), name()).prop_map(|(a, b, c)| format!("{a}/{b}/{c}")),
    ]
}

/// Something that probably exists.
fn existing() -> impl Strategy<Value = Pick> {
    prop_oneof![
        6 => (0usize..64).prop_map(Pick::Existing),
        1 => path().prop_map(Pick::Path),
    ]
}

/// A name that probably does not exist yet, in a directory that does.
fn fresh() -> impl Strategy<Value = Pick> {
    prop_oneof![
        5 => (0usize..64, name()).prop_map(|(n, name)| Pick::In(n, name)),
        1 => (0usize..64).prop_map(Pick::Existing),
        1 => path().prop_map(Pick::Path),
    ]
}

/// A name that may or may not exist: the target of a rename or a symlink.
fn either() -> impl Strategy<Value = Pick> {
    prop_oneof![fresh(), existing()]
}

fn perm() -> impl Strategy<Value = Perm> {
    // No setuid or setgid (see the top of this file for why). The sticky bit changes nothing
    // here, since root may remove anything.
    (0u32..=0o777, any::<bool>()).prop_map(|(p, sticky)| Perm(p | if sticky { 0o1000 } else { 0 }))
}

/// Offsets and sizes around chunk boundaries, and anywhere up to six chunks.
fn position() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..6 * CHUNK,
        (0u64..6, -2i64..=2).prop_map(|(k, d)| (k * CHUNK).saturating_add_signed(d)),
        Just(0),
    ]
}

pub(super) fn op() -> impl Strategy<Value = Op<Pick>> {
    let len = prop_oneof![0usize..64, 0usize..20 * 1024, Just(CHUNK as usize)];
    let xname = || select(&["user.a", "user.b", "trusted.t"][..]);
    let mode = select(
        &[
            RenameMode::Replace,
            RenameMode::NoReplace,
            RenameMode::Exchange,
        ][..],
    );
    let id = || select(&[0u32, 1000, 65534][..]);
    prop_oneof![
        4 => (fresh(), perm()).prop_map(|(path, perm)| Op::Create { path, perm }),
        3 => (fresh(), perm()).prop_map(|(path, perm)| Op::Mkdir { path, perm }),
        2 => (fresh(), either()).prop_map(|(path, target)| Op::Symlink { path, target }),
        8 => (existing(), position(), len, any::<u8>())
            .prop_map(|(path, offset, len, seed)| Op::Write { path, offset, len, seed }),
        2 => (existing(), position(), 0u32..3 * CHUNK as u32)
            .prop_map(|(path, offset, len)| Op::Read { path, offset, len }),
        3 => (existing(), position()).prop_map(|(path, size)| Op::Truncate { path, size }),
        2 => existing().prop_map(|path| Op::Unlink { path }),
        2 => existing().prop_map(|path| Op::Rmdir { path }),
        5 => (existing(), either(), mode)
            .prop_map(|(from, to, mode)| Op::Rename { from, to, mode }),
        2 => (existing(), fresh()).prop_map(|(from, to)| Op::Link { from, to }),
        1 => (existing(), perm()).prop_map(|(path, perm)| Op::Chmod { path, perm }),
        1 => (existing(), id(), id()).prop_map(|(path, uid, gid)| Op::Chown { path, uid, gid }),
        2 => (existing(), xname(), vec(any::<u8>(), 0..16))
            .prop_map(|(path, name, value)| Op::SetXattr { path, name, value }),
        1 => (existing(), xname()).prop_map(|(path, name)| Op::RemoveXattr { path, name }),
        2 => Just(Op::Commit),
        1 => Just(Op::Reopen),
    ]
}

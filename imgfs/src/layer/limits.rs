//! `ImportLimits`, the bounds on what one layer may make a backend do, and `Meter`, which
//! measures a layer's uncompressed stream against them as it is read.
//!
//! What a layer costs is its uncompressed stream, except for runs of zeros that every backend
//! stores as holes: imgfs keeps a whole chunk of zeros as `Extent::Zero`, and the overlayfs
//! applier seeks over zero blocks. Sparse regions of a GNU sparse entry are not in the stream at
//! all. So the expansion ratio and the room on the file system count the stream less those runs,
//! and a run only counts as a hole for the part of it that holes of the coarsest grain any
//! backend uses (`HOLE_GRAIN`) are sure to cover.

use std::io::{self, Read};

/// Bounds on what one layer may do, so a hostile or broken layer cannot fill the disk.
#[derive(Clone, Copy, Debug)]
pub struct ImportLimits {
    /// Most entries (files, directories, links, whiteouts) in the layer.
    pub max_entries: u64,
    /// Most bytes of uncompressed tar stream.
    pub max_bytes: u64,
    /// Most bytes of uncompressed stream, less runs stored as holes, per byte of compressed
    /// layer; 0 for no bound. Not checked below `RATIO_FLOOR`, nor for an uncompressed layer.
    pub max_ratio: u64,
    /// Most bytes the layer may store (its uncompressed stream less runs stored as holes): the
    /// room the backend's file system has for it. `None` for no bound.
    pub max_stored: Option<u64>,
    /// Longest path of an entry.
    pub max_path: usize,
    /// How errors name what raises each limit.
    pub names: &'static LimitNames,
}

/// How a limit's error names the option or setting that raises it, e.g. `--max-entries`.
#[derive(Debug)]
pub struct LimitNames {
    pub entries: &'static str,
    pub bytes: &'static str,
    pub ratio: &'static str,
    pub stored: &'static str,
    pub path: &'static str,
}

/// The names of the `imgfs import` options.
pub static IMGFS_LIMIT_NAMES: LimitNames = LimitNames {
    entries: "--max-entries",
    bytes: "--max-bytes",
    ratio: "--max-ratio",
    stored: "--max-stored",
    path: "--max-path",
};

impl Default for ImportLimits {
    fn default() -> Self {
        ImportLimits {
            max_entries: 4_000_000,
            max_bytes: 256 << 30,
            max_ratio: 0,
            max_stored: None,
            max_path: 4096,
            names: &IMGFS_LIMIT_NAMES,
        }
    }
}

/// Bytes of stored stream below which the expansion ratio is not checked: a small layer of
/// repetitive text, or an empty one (10 KiB of tar that gzip makes 100 bytes of), expands far
/// past any sane ratio while costing nothing worth refusing.
pub const RATIO_FLOOR: u64 = 64 << 20;

/// The coarsest grain at which a backend stores zeros as holes: imgfs's largest chunk size
/// (the overlayfs applier's grain is smaller). A run of zeros of length L in the stream covers
/// at least L - 2 * HOLE_GRAIN bytes of whole grains of its file, less the tar padding it may
/// include.
pub const HOLE_GRAIN: u64 = 16 << 20;

impl ImportLimits {
    pub(crate) fn too_many_entries(&self) -> crate::Error {
        crate::Error::Limit(format!(
            "layer has more than {} entries (limit {})",
            self.max_entries, self.names.entries
        ))
    }

    pub(crate) fn path_too_long(&self, len: usize) -> crate::Error {
        crate::Error::NameTooLong(format!("path of {len} bytes (limit {})", self.names.path))
    }

    /// The error of a stream longer than `max_bytes`, as an I/O error: readers in between pass
    /// it on, and `FileTooLarge` turns it back into `Error::Limit`.
    pub(crate) fn too_large(&self) -> io::Error {
        limit_io(format!(
            "layer expands to more than {} bytes (limit {})",
            self.max_bytes, self.names.bytes
        ))
    }
}

fn limit_io(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::FileTooLarge, message)
}

/// Measures the uncompressed stream of a layer against its limits, block by block.
pub(crate) struct Meter<'l> {
    limits: &'l ImportLimits,
    /// Bytes of uncompressed stream so far.
    pub(crate) tar_bytes: u64,
    /// Bytes of closed zero runs that are surely stored as holes.
    holes: u64,
    /// Length of the run of zeros the stream ends with so far.
    run: u64,
}

impl<'l> Meter<'l> {
    pub(crate) fn new(limits: &'l ImportLimits) -> Meter<'l> {
        Meter {
            limits,
            tar_bytes: 0,
            holes: 0,
            run: 0,
        }
    }

    /// Counts the next `block` of the stream; `compressed` is how many bytes of compressed
    /// layer have been read so far (`None` for an uncompressed layer). Fails with a
    /// `FileTooLarge` error naming the limit the stream went past.
    pub(crate) fn feed(&mut self, block: &[u8], compressed: Option<u64>) -> io::Result<()> {
        self.tar_bytes += block.len() as u64;
        if self.tar_bytes > self.limits.max_bytes {
            return Err(self.limits.too_large());
        }
        match first_nonzero(block) {
            None => self.run += block.len() as u64,
            Some(first) => {
                self.run += first as u64;
                self.holes += hole_part(self.run);
                self.run = trailing_zeros(block) as u64;
            }
        }
        let stored = self.tar_bytes - self.holes - hole_part(self.run);
        if let Some(room) = self.limits.max_stored
            && stored > room
        {
            return Err(limit_io(format!(
                "layer needs more than the {room} bytes its store's file system has free above \
                 the reserve (limit {})",
                self.limits.names.stored
            )));
        }
        if let Some(compressed) = compressed
            && self.limits.max_ratio > 0
            && stored > RATIO_FLOOR
            && stored / self.limits.max_ratio > compressed.max(1)
        {
            return Err(limit_io(format!(
                "layer expands past {} times its compressed size (limit {})",
                self.limits.max_ratio, self.limits.names.ratio
            )));
        }
        Ok(())
    }
}

/// The part of a zero run of `len` bytes that holes of `HOLE_GRAIN` surely cover (the run may
/// take in up to 511 bytes of one entry's tar padding).
fn hole_part(len: u64) -> u64 {
    len.saturating_sub(2 * HOLE_GRAIN + 511)
}

/// The index of the first byte of `b` that is not zero: blocks are compared with zeros by
/// `memcmp` (fast even unoptimized), then the first block that differs byte by byte.
fn first_nonzero(b: &[u8]) -> Option<usize> {
    static ZEROS: [u8; 4096] = [0; 4096];
    let mut at = 0;
    for block in b.chunks(ZEROS.len()) {
        if block != &ZEROS[..block.len()] {
            return Some(
                at + block
                    .iter()
                    .position(|&x| x != 0)
                    .expect("a byte is not zero"),
            );
        }
        at += block.len();
    }
    None
}

/// How many zero bytes `b` ends with.
fn trailing_zeros(b: &[u8]) -> usize {
    static ZEROS: [u8; 4096] = [0; 4096];
    let mut n = 0;
    for block in b.rchunks(ZEROS.len()) {
        if block != &ZEROS[..block.len()] {
            return n + block.iter().rev().take_while(|&&x| x == 0).count();
        }
        n += block.len();
    }
    n
}

/// A reader that counts the bytes read through it into a shared cell, so the code that reads
/// what a decoder makes of them knows how much compressed input that took.
pub(crate) struct CountingReader<'c, R> {
    pub(crate) inner: R,
    pub(crate) count: &'c std::cell::Cell<u64>,
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// A reader that meters an uncompressed layer stream as it passes.
pub(crate) struct MeteredReader<'l, R> {
    pub(crate) inner: R,
    pub(crate) meter: Meter<'l>,
}

impl<R: Read> Read for MeteredReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.meter.feed(&buf[..n], None)?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests;

//! Conversion between snapshots and OCI image layers (tar streams with whiteouts).
//!
//! `import` applies a layer on top of a parent as a new committed snapshot; `export` writes a
//! snapshot's diff from its parent (or its whole tree) as a deterministic layer tar; `diff`
//! lists what changed between two snapshots, and is what `export` walks.

pub mod diff;
pub mod export;
pub mod import;

use std::io::{Read, Write};

use sha2::{Digest, Sha256};

pub use diff::{Change, ChangeKind};
pub use export::{ExportReport, export_layer};
pub use import::{ImportLimits, ImportReport, import_layer};

/// The prefix OCI uses to mark a deleted name in a layer.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// The entry that marks a directory as opaque (nothing below it in lower layers shows through).
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// A reader that hashes and counts what passes through it.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    limit: u64,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R, limit: u64) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
            limit,
        }
    }

    pub(crate) fn finish(self) -> (String, u64) {
        (
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.count,
        )
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        if self.count > self.limit {
            return Err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                format!(
                    "layer expands to more than {} bytes (--max-bytes)",
                    self.limit
                ),
            ));
        }
        Ok(n)
    }
}

/// A writer that hashes and counts what passes through it.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    pub(crate) fn finish(self) -> (W, String, u64) {
        (
            self.inner,
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.count,
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

//! Conversion between snapshots and OCI image layers (tar streams with whiteouts).
//!
//! `import` applies a layer on top of a parent as a new committed snapshot; `export` writes a
//! snapshot's diff from its parent (or its whole tree) as a deterministic layer tar; `diff`
//! lists what changed between two snapshots, and is what `export` walks.

pub mod diff;
pub mod export;
pub mod import;
pub mod limits;
mod paxsparse;
pub mod sparse;
pub(crate) mod writer;

use std::io::{Read, Write};

use sha2::{Digest, Sha256};

pub use diff::{Change, ChangeKind};
pub use export::{ExportReport, export_layer};
pub use import::{ImportReport, import_layer};
pub use limits::{IMGFS_LIMIT_NAMES, ImportLimits, LimitNames};
pub use sparse::copy_sparse;

/// The prefix OCI uses to mark a deleted name in a layer.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// The entry that marks a directory as opaque (nothing below it in lower layers shows through).
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// A reader that counts what passes through it and has it hashed on another
/// thread: the layer's diff id costs ~0.15 s of CPU per 200 MB, which the importer would
/// otherwise pay on its own core.
pub(crate) struct HashingReader<R> {
    inner: R,
    batch: Vec<u8>,
    tx: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    hasher: Option<std::thread::JoinHandle<[u8; 32]>>,
    count: u64,
}

const HASH_BATCH: usize = 256 << 10;

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(16);
        let hasher = std::thread::Builder::new()
            .name("imgfs-diffid".into())
            .spawn(move || {
                let mut h = Sha256::new();
                for buf in rx {
                    h.update(&buf);
                }
                h.finalize().into()
            })
            .expect("spawn the diff id hasher");
        HashingReader {
            inner,
            batch: Vec::with_capacity(HASH_BATCH),
            tx: Some(tx),
            hasher: Some(hasher),
            count: 0,
        }
    }

    fn send(&mut self) {
        let full = std::mem::replace(&mut self.batch, Vec::with_capacity(HASH_BATCH));
        if let Some(tx) = &self.tx {
            // The hasher only stops when we drop the sender, so a send cannot fail.
            let _ = tx.send(full);
        }
    }

    pub(crate) fn finish(mut self) -> (String, u64) {
        self.send();
        self.tx = None;
        let digest = self
            .hasher
            .take()
            .expect("hasher runs until finish")
            .join()
            .expect("the hasher does not panic");
        (format!("sha256:{}", hex::encode(digest)), self.count)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        self.batch.extend_from_slice(&buf[..n]);
        if self.batch.len() >= HASH_BATCH {
            self.send();
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

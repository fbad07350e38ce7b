//! A layer's gzip compression on a thread of its own.
//!
//! A step's layer is one stream: the backend's diff writes a tar (and hashes it into the diff
//! ID), gzip compresses it, and the blob writer hashes and stores the result. On one thread the
//! three take turns; here the compression and the blob's write run beside the diff, and go on
//! while the step's snapshot is committed, which needs only the diff ID. The bytes are those a
//! `GzEncoder` writes on the caller's thread: the same input in the same order, so a layer's
//! digest does not depend on this.

use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use flate2::Compression;
use flate2::write::GzEncoder;

/// Bytes handed to the thread at a time: large enough that the hand-over costs nothing next to
/// compressing them, small enough that the two threads start working together at once.
const BATCH: usize = 256 << 10;

/// Batches in flight; a diff faster than the compression waits for it beyond this.
const QUEUE: usize = 8;

/// A writer whose bytes are gzip-compressed into `W` on another thread.
pub(crate) struct GzipThread<W: Write + Send + 'static> {
    buf: Vec<u8>,
    tx: Option<SyncSender<Vec<u8>>>,
    /// Buffers the thread is done with, for the next batches.
    spare: Receiver<Vec<u8>>,
    thread: Option<JoinHandle<io::Result<W>>>,
}

impl<W: Write + Send + 'static> GzipThread<W> {
    /// Compresses into `out` on a new thread, whose work counts as time in `span`
    /// (`build::timing`).
    pub(crate) fn spawn(out: W, level: u32, span: tracing::Span) -> io::Result<GzipThread<W>> {
        let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE);
        let (spare_tx, spare) = sync_channel::<Vec<u8>>(QUEUE + 1);
        let thread = std::thread::Builder::new()
            .name("layer-gzip".to_owned())
            .spawn(move || {
                let mut gz = GzEncoder::new(out, Compression::new(level));
                for mut batch in rx {
                    span.in_scope(|| gz.write_all(&batch))?;
                    batch.clear();
                    let _ = spare_tx.try_send(batch);
                }
                span.in_scope(|| gz.finish())
            })?;
        Ok(GzipThread {
            buf: Vec::with_capacity(BATCH),
            tx: Some(tx),
            spare,
            thread: Some(thread),
        })
    }

    /// Hands the buffered bytes to the thread. When the thread has stopped (its write failed),
    /// its error is returned.
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let next = self
            .spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(BATCH));
        let batch = std::mem::replace(&mut self.buf, next);
        let Some(tx) = self.tx.as_ref() else {
            return Err(stopped());
        };
        if tx.send(batch).is_err() {
            return Err(self.join().err().unwrap_or_else(|| {
                io::Error::other("the layer's compression stopped without an error")
            }));
        }
        Ok(())
    }

    /// Ends the input and waits for the thread; once it has failed, every later call fails.
    fn join(&mut self) -> io::Result<W> {
        self.tx = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("the layer's compression thread panicked")),
            None => Err(stopped()),
        }
    }

    /// Compresses what is left, ends the gzip stream and returns the writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.send()?;
        self.join()
    }
}

/// What a write after the thread failed gets (the failure itself went to an earlier call).
fn stopped() -> io::Error {
    io::Error::other("the layer's compression stopped after an error")
}

impl<W: Write + Send + 'static> Write for GzipThread<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(BATCH - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == BATCH {
            self.send()?;
        }
        Ok(n)
    }

    /// Nothing to do: the stream is only complete at `finish`.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write + Send + 'static> Drop for GzipThread<W> {
    /// Abandoned (the step failed, or its diff was empty): the thread ends with its input, and
    /// what it wrote is dropped with its writer.
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A writer that fails once it has taken `limit` bytes.
    struct Failing {
        taken: usize,
        limit: usize,
    }

    impl Write for Failing {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.taken + buf.len() > self.limit {
                return Err(io::Error::other("disk full"));
            }
            self.taken += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn sample(len: usize) -> Vec<u8> {
        // Compressible, but not trivially: a text-like pattern with a counter.
        let mut out = Vec::with_capacity(len);
        let mut i = 0u64;
        while out.len() < len {
            out.extend_from_slice(format!("line {i} of a layer {}\n", i * 7919 % 1013).as_bytes());
            i += 1;
        }
        out.truncate(len);
        out
    }

    #[test]
    fn writes_the_bytes_a_gz_encoder_on_this_thread_writes() {
        let data = sample(3 * BATCH + 12345);
        let mut direct = GzEncoder::new(Vec::new(), Compression::new(2));
        direct.write_all(&data).unwrap();
        let direct = direct.finish().unwrap();

        let mut threaded = GzipThread::spawn(Vec::new(), 2, tracing::Span::none()).unwrap();
        // Uneven writes, as a tar writer makes them.
        for piece in data.chunks(100_003) {
            threaded.write_all(piece).unwrap();
        }
        let threaded = threaded.finish().unwrap();
        assert_eq!(threaded, direct);

        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&threaded[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn a_failed_write_on_the_thread_is_the_callers_error() {
        let data = sample(40 * BATCH);
        let mut threaded = GzipThread::spawn(
            Failing {
                taken: 0,
                limit: 4096,
            },
            0,
            tracing::Span::none(),
        )
        .unwrap();
        let err = threaded.write_all(&data).unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        // A caller that goes on anyway gets an error, not a panic.
        let again = threaded.write_all(&data).unwrap_err();
        assert!(again.to_string().contains("stopped"), "{again}");
        assert!(threaded.finish().is_err());
    }

    /// A writer that keeps a count of its owners up, to see when the thread has dropped it.
    struct Held(
        #[expect(dead_code, reason = "held only for its reference count")] std::sync::Arc<()>,
    );

    impl Write for Held {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn an_abandoned_compression_ends_its_thread_and_drops_its_writer() {
        let owner = std::sync::Arc::new(());
        let mut threaded =
            GzipThread::spawn(Held(owner.clone()), 2, tracing::Span::none()).unwrap();
        threaded.write_all(&sample(5 * BATCH)).unwrap();
        drop(threaded);
        assert_eq!(std::sync::Arc::strong_count(&owner), 1);
    }
}

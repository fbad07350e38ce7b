//! What a build prints while it runs: a header per step, the output of RUN steps under it, and
//! notes. Stages on several threads share one `Progress`; each write is one whole line or
//! chunk, so lines of different stages do not mix within a line.
//!
//! Output that nobody reads any more (a pipe whose reader is gone, as in `img build | head`)
//! stops the build: the first write that fails with EPIPE marks the output closed, each stage
//! checks `closed` before its next step, and the build's `Interrupt`, when it was given one
//! (`interrupting`), is raised as by SIGPIPE, so that a running step is stopped at once instead
//! of running to its end with its output thrown away. That is what a program writing to such a pipe
//! does (it dies of SIGPIPE), but the build ends through its own error paths, so its mounts and
//! snapshots are cleaned up. Other write errors are ignored: they do not fail the build.

use std::io::{self, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::interrupt::Interrupt;

pub struct Progress {
    out: Mutex<Box<dyn Write + Send>>,
    closed: AtomicBool,
    on_close: Option<Interrupt>,
}

impl Progress {
    /// Progress on standard error, where `docker build` prints it too.
    pub fn stderr() -> Progress {
        Progress::to(Box::new(io::stderr()))
    }

    pub fn to(out: Box<dyn Write + Send>) -> Progress {
        Progress {
            out: Mutex::new(out),
            closed: AtomicBool::new(false),
            on_close: None,
        }
    }

    /// Makes a closed output also raise `interrupt`, as SIGPIPE would.
    pub fn interrupting(mut self, interrupt: Interrupt) -> Progress {
        self.on_close = Some(interrupt);
        self
    }

    /// Whether a write found the output closed (EPIPE): the build must stop.
    pub fn closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    fn note_result(&self, r: io::Result<()>) -> io::Result<()> {
        if let Err(e) = &r
            && e.kind() == io::ErrorKind::BrokenPipe
        {
            self.closed.store(true, Ordering::Relaxed);
            if let Some(interrupt) = &self.on_close {
                interrupt.raise(nix::sys::signal::Signal::SIGPIPE as i32);
            }
        }
        r
    }

    fn line(&self, text: &str) {
        let mut out = self.out.lock().expect("poisoned");
        let r = writeln!(out, "{text}").and_then(|()| out.flush());
        let _ = self.note_result(r);
    }

    /// `[stage 2/5] RUN make`, with ` CACHED` when the step's result came from the cache.
    pub fn step(&self, stage: &str, n: usize, total: usize, text: &str, cached: bool) {
        let cached = if cached { " CACHED" } else { "" };
        self.line(&format!("[{stage} {n}/{total}] {text}{cached}"));
    }

    pub fn note(&self, text: &str) {
        self.line(&format!("note: {text}"));
    }

    pub fn error(&self, text: &str) {
        self.line(&format!("error: {text}"));
    }

    /// A writer for a RUN step's output.
    pub fn output(&self) -> ProgressWriter<'_> {
        ProgressWriter { progress: self }
    }
}

pub struct ProgressWriter<'a> {
    progress: &'a Progress,
}

impl Write for ProgressWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let r = self.progress.out.lock().expect("poisoned").write_all(buf);
        self.progress.note_result(r)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let r = self.progress.out.lock().expect("poisoned").flush();
        self.progress.note_result(r)
    }
}

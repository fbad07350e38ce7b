//! What a build prints while it runs: a header per step, the output of RUN steps under it, and
//! notes. Stages on several threads share one `Progress`; each write is one whole line or
//! chunk, so lines of different stages do not mix within a line.

use std::io::{self, Write};
use std::sync::Mutex;

pub struct Progress {
    out: Mutex<Box<dyn Write + Send>>,
}

impl Progress {
    /// Progress on standard error, where `docker build` prints it too.
    pub fn stderr() -> Progress {
        Progress::to(Box::new(io::stderr()))
    }

    pub fn to(out: Box<dyn Write + Send>) -> Progress {
        Progress {
            out: Mutex::new(out),
        }
    }

    fn line(&self, text: &str) {
        let mut out = self.out.lock().expect("poisoned");
        // A closed stderr must not fail the build.
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
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
        let mut out = self.progress.out.lock().expect("poisoned");
        out.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.progress.out.lock().expect("poisoned").flush()
    }
}

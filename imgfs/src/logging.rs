//! Where the binaries' log lines go: standard error, through a writer that never fails.
//!
//! tracing-subscriber reports a failed write with `eprintln!`, which panics when standard error
//! is a pipe nobody reads any more (`img -d build 2>&1 | head`). Log lines are written by
//! whichever thread logs, FUSE serving threads included (the FUSE library logs each request at
//! debug), so such a panic killed the thread that served a mount and left every caller of the
//! mount waiting. A log line that cannot be written is lost instead: what the command is for
//! (its output, its exit status) reports a closed stream, not the logs.

use std::io::{self, Write};

/// A writer for log lines: a write that fails (EPIPE, EBADF, ...) counts as done.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogWriter<W>(pub W);

/// Standard error for log lines:
/// `tracing_subscriber::fmt().with_writer(imgfs::logging::stderr)`.
pub fn stderr() -> LogWriter<io::Stderr> {
    LogWriter(io::stderr())
}

impl<W: Write> Write for LogWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = self.0.write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_to_a_closed_pipe_is_dropped_not_an_error() {
        let (reader, mut writer) = io::pipe().unwrap();
        drop(reader);
        // Rust ignores SIGPIPE, so the write fails with EPIPE and the test process survives.
        let plain = writer.write_all(b"plain\n");
        assert_eq!(plain.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
        let mut log = LogWriter(writer);
        assert!(log.write_all(b"logged\n").is_ok());
        assert!(log.flush().is_ok());
    }
}

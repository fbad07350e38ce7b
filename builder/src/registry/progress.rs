//! Progress of blob transfers: indicatif bars on a terminal, one plain line per blob otherwise
//! (logs and CI), or nothing.

use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where progress goes.
pub enum Reporter {
    /// Bars on standard error.
    Bars(MultiProgress),
    /// A line on standard error per finished blob and per retry.
    Lines,
    Quiet,
}

/// How a blob ended up where it had to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlobEvent {
    /// Downloaded into the store.
    Pulled,
    /// Already in the local store: not downloaded.
    Present,
    /// Uploaded.
    Pushed,
    /// Already in the target repository: not uploaded.
    Exists,
    /// Mounted from another repository of the same registry: not uploaded.
    Mounted { from: String },
}

impl Reporter {
    /// Bars when standard error is a terminal, plain lines otherwise.
    pub fn for_stderr() -> Reporter {
        if std::io::stderr().is_terminal() {
            Reporter::Bars(MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
        } else {
            Reporter::Lines
        }
    }

    /// A message between the bars (retries).
    pub fn note(&self, message: &str) {
        match self {
            Reporter::Bars(m) => {
                let _ = m.println(message);
            }
            Reporter::Lines => eprintln!("{message}"),
            Reporter::Quiet => {}
        }
    }

    /// Starts showing a transfer of `size` bytes of blob `digest`.
    pub fn blob(&self, digest: &str, size: u64) -> BlobProgress {
        let label = short(digest);
        let bar = match self {
            Reporter::Bars(m) => {
                let bar = m.add(ProgressBar::new(size));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
                    )
                    .expect("the template is valid")
                    .progress_chars("=> "),
                );
                bar.set_prefix(label.clone());
                Some(bar)
            }
            _ => None,
        };
        BlobProgress {
            bar,
            label,
            size,
            lines: matches!(self, Reporter::Lines),
        }
    }
}

/// `sha256:0123456789ab`: enough of a digest to tell blobs apart.
fn short(digest: &str) -> String {
    digest.chars().take("sha256:".len() + 12).collect()
}

/// One blob's transfer.
pub struct BlobProgress {
    bar: Option<ProgressBar>,
    label: String,
    size: u64,
    lines: bool,
}

impl BlobProgress {
    pub fn advance(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    /// A handle that counts bytes from anywhere (an upload body's stream).
    pub fn counter(&self) -> impl Fn(u64) + Send + Sync + 'static {
        let bar = self.bar.clone();
        move |n| {
            if let Some(bar) = &bar {
                bar.inc(n);
            }
        }
    }

    /// Moves back to `position` (a download restarted from the beginning).
    pub fn set_position(&self, position: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(position);
        }
    }

    pub fn finish(self, event: &BlobEvent) {
        let what = match event {
            BlobEvent::Pulled => "pulled".to_string(),
            BlobEvent::Present => "already present".to_string(),
            BlobEvent::Pushed => "pushed".to_string(),
            BlobEvent::Exists => "already exists".to_string(),
            BlobEvent::Mounted { from } => format!("mounted from {from}"),
        };
        if let Some(bar) = self.bar {
            bar.set_position(self.size);
            bar.finish_with_message(what);
        } else if self.lines {
            let size = bytesize::ByteSize::b(self.size).display().iec_short();
            eprintln!("{}: {what} ({size})", self.label);
        }
    }
}

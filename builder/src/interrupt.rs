//! Interrupting a build: a flag that a signal raises and that the executor and the engine check,
//! so that a SIGINT or SIGTERM stops the running container and the build cleans up after itself.
//!
//! The flag knows nothing of signals beyond their number: the `img` binary decides which signals
//! raise it (a thread of its own waits for them), and tests raise it directly.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

/// Shared between the thread that receives signals and everything that runs a build. Clones
/// share one flag; `Interrupt::default()` is never raised unless someone raises it.
#[derive(Clone, Debug, Default)]
pub struct Interrupt(Arc<AtomicI32>);

impl Interrupt {
    /// Raises the flag for signal `signal` (a signal number); the first one raised stays.
    pub fn raise(&self, signal: i32) {
        let _ = self
            .0
            .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// The signal that raised the flag, if any.
    pub fn signal(&self) -> Option<Interrupted> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            n => Some(Interrupted(n)),
        }
    }
}

/// A build stopped by signal `.0` (a signal number). The process exits with 128 + the number,
/// as a shell reports a command killed by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interrupted(pub i32);

impl Interrupted {
    pub fn exit_code(self) -> u8 {
        (128 + self.0).clamp(0, 255) as u8
    }
}

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match nix::sys::signal::Signal::try_from(self.0) {
            Ok(s) => write!(f, "interrupted by {s}"),
            Err(_) => write!(f, "interrupted by signal {}", self.0),
        }
    }
}

impl std::error::Error for Interrupted {}

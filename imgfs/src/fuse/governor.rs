//! The scheduling policy of the FUSE-over-io_uring ring threads: the `fuser::RingObserver`
//! that `MountOptions::idle_rings` installs. Owns nothing but those threads' policy; fuser
//! only tells it their thread ids and when they have stopped.
//!
//! A caller blocked on a FUSE request is woken by the ring thread that answers it, on that
//! thread's CPU (fuser pins each ring thread to the CPU whose requests it carries, the
//! caller's). At that moment the ring thread is still running, so the scheduler sees the CPU
//! busy and moves the caller to an idle CPU instead: on a VM whose idle vCPUs halt, every
//! round trip then pays for waking a halted vCPU, and the caller hops between CPUs request
//! after request. A CPU whose only runnable threads run under SCHED_IDLE counts as idle for
//! that choice (`sched_idle_cpu`), so with the ring threads under SCHED_IDLE the caller stays
//! where it was and the CPU switches straight back to it. 10,000 `open/write/close` of 4 KiB
//! files took 2.9 s with the ring threads under SCHED_OTHER and 1.5-1.6 s with the governor
//! below here (1.3-1.4 s with SCHED_IDLE always; docs/benchmarks.md).
//!
//! SCHED_IDLE threads get almost no CPU while other threads want it: with two CPU-bound
//! processes running, the same loop of 300 files took 4.8 s instead of 0.07 s (with the
//! governor: 6,000 files in 0.93-1.05 s against 0.95-1.2 s without SCHED_IDLE). So the
//! governor gives the ring threads SCHED_IDLE only while they are busy and not kept waiting
//! for a CPU. Every `BUSY_PERIOD` while requests come in (`QUIET_PERIOD` otherwise) it reads
//! how long each ring thread waited to run (/proc/self/task/TID/schedstat):
//! - a ring thread that waited more than `STARVED` under SCHED_IDLE, or more runnable threads
//!   on the machine than CPUs (`procs_running` of /proc/stat, the governor itself counted),
//!   puts them all back under SCHED_OTHER for a while (`HOLD_MIN`, doubling up to `HOLD_MAX`
//!   while it happens again). schedstat adds a wait to a thread's total only once the thread
//!   has run, so a ring thread kept off every CPU shows no wait until then: the count of
//!   runnable threads sees the busy CPUs at once;
//! - after `QUIET_AFTER` without requests the ring threads go back to SCHED_OTHER, so the
//!   first request after a quiet spell never waits behind other work.
//!
//! Leaving SCHED_IDLE needs CAP_SYS_NICE or an RLIMIT_NICE of 20, so an unprivileged process
//! without them never enters it (`Governor::usable` tries first, on a thread of its own).
//!
//! This lived in img's fork of fuser until the fork got a hook for it (`Config::ring_observer`):
//! the policy is imgfs's, tuned on its VMs, and the fork stays smaller without it.

use std::io;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the governor looks while the ring threads serve requests.
const BUSY_PERIOD: Duration = Duration::from_millis(2);
/// How often it looks while they do not.
const QUIET_PERIOD: Duration = Duration::from_millis(100);
/// A ring thread that waited this long for a CPU within one look, under SCHED_IDLE, is being
/// starved by other work.
const STARVED: Duration = Duration::from_millis(1);
/// How long the ring threads stay under SCHED_OTHER after being starved: `HOLD_MIN`, doubled
/// each time they are starved again, up to `HOLD_MAX`, and back to `HOLD_MIN` once they ran
/// under SCHED_IDLE for `HOLD_MAX` unharmed. Under lasting load a try costs a few ms every
/// `HOLD_MAX`.
const HOLD_MIN: Duration = Duration::from_millis(100);
const HOLD_MAX: Duration = Duration::from_secs(5);
/// Without requests for this long, the ring threads go back to SCHED_OTHER.
const QUIET_AFTER: Duration = Duration::from_secs(1);

/// Sets the scheduling policy of thread `tid` (0: the calling thread).
fn set_policy(tid: libc::pid_t, policy: libc::c_int) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the call's duration.
    if unsafe { libc::sched_setscheduler(tid, policy, &param) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Time thread `tid` of this process has run and has waited to run, in ns (schedstat).
fn schedstat(tid: libc::pid_t) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    let mut fields = text.split_ascii_whitespace().map(|f| f.parse::<u64>().ok());
    Some((fields.next()??, fields.next()??))
}

/// Whether every CPU has something to run besides the caller: more runnable threads on the
/// machine (/proc/stat's `procs_running`, which counts the caller) than CPUs. `false` when
/// it cannot tell.
fn cpus_busy(cpus: usize) -> bool {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|stat| {
            stat.lines()
                .find_map(|l| l.strip_prefix("procs_running "))
                .and_then(|n| n.trim().parse::<usize>().ok())
        })
        .is_some_and(|running| running > cpus)
}

/// Whether this process may move a thread out of SCHED_IDLE again: tried on a thread of its
/// own, since a thread that cannot is stuck there. The thread is named: it starts from a ring
/// thread, whose name an unnamed one would inherit and be counted as a ring.
fn can_leave_idle() -> bool {
    std::thread::Builder::new()
        .name("imgfs-probe".into())
        .spawn(|| {
            set_policy(0, libc::SCHED_IDLE).is_ok() && set_policy(0, libc::SCHED_OTHER).is_ok()
        })
        .and_then(|t| t.join().map_err(|_| io::Error::other("the probe panicked")))
        .unwrap_or(false)
}

/// Watches the ring threads of one session: their ids, filled in as they start, the watching
/// thread, started with the first of them, and its stop flag.
#[derive(Debug, Default)]
pub(crate) struct Governor {
    /// Whether this process can govern at all (`usable`), decided when the first ring starts.
    usable: OnceLock<bool>,
    tids: Mutex<Vec<libc::pid_t>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    stop: Mutex<bool>,
    wake: Condvar,
}

impl fuser::RingObserver for Governor {
    fn ring_thread_started(self: Arc<Self>, tid: libc::pid_t) {
        if !*self.usable.get_or_init(Governor::usable) {
            return;
        }
        lock(&self.tids).push(tid);
        let mut thread = lock(&self.thread);
        if thread.is_none() {
            let this = self.clone();
            match std::thread::Builder::new()
                .name("imgfs-governor".into())
                .spawn(move || this.run())
            {
                Ok(handle) => *thread = Some(handle),
                Err(e) => tracing::warn!("cannot start the ring governor: {e}"),
            }
        }
    }

    fn rings_stopped(&self) {
        *lock(&self.stop) = true;
        self.wake.notify_all();
        let thread = lock(&self.thread).take();
        if thread.is_some_and(|thread| thread.join().is_err()) {
            tracing::error!("the ring governor panicked");
        }
    }
}

/// A poisoned lock here only means a governor thread panicked; its data stay usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Governor {
    /// Whether this process can read schedstat and bring a thread back from SCHED_IDLE.
    fn usable() -> bool {
        // SAFETY: gettid has no preconditions.
        if schedstat(unsafe { libc::gettid() }).is_none() {
            tracing::debug!("no schedstat: the ring threads stay under SCHED_OTHER");
            return false;
        }
        if !can_leave_idle() {
            tracing::debug!("cannot leave SCHED_IDLE: the ring threads stay under SCHED_OTHER");
            return false;
        }
        true
    }

    fn set_all(&self, tids: &[libc::pid_t], idle: bool) {
        let policy = if idle {
            libc::SCHED_IDLE
        } else {
            libc::SCHED_OTHER
        };
        for &tid in tids {
            // A thread that has ended is no error; any other failure is.
            if let Err(e) = set_policy(tid, policy)
                && e.raw_os_error() != Some(libc::ESRCH)
            {
                tracing::warn!(
                    tid,
                    "cannot set the scheduling policy of a ring thread: {e}"
                );
            }
        }
    }

    /// Watches the ring threads until `rings_stopped`.
    fn run(&self) {
        let mut idle = false;
        let mut last: Vec<(u64, u64)> = Vec::new();
        let mut last_busy = Instant::now()
            .checked_sub(QUIET_AFTER)
            .unwrap_or_else(Instant::now);
        let mut idle_since = Instant::now();
        let mut hold = HOLD_MIN;
        let mut hold_until = Instant::now();
        let mut period = QUIET_PERIOD;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        loop {
            {
                let mut stop = lock(&self.stop);
                if !*stop {
                    stop = self
                        .wake
                        .wait_timeout(stop, period)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                if *stop {
                    break;
                }
            }
            let tids = lock(&self.tids).clone();
            let now: Vec<(u64, u64)> = tids
                .iter()
                .map(|&tid| schedstat(tid).unwrap_or((0, 0)))
                .collect();
            let (ran, waited) = if last.len() == now.len() {
                now.iter().zip(&last).fold((0, 0), |(ran, waited), (n, l)| {
                    (
                        ran + n.0.saturating_sub(l.0),
                        waited.max(n.1.saturating_sub(l.1)),
                    )
                })
            } else {
                (0, 0)
            };
            last = now;
            let waited = Duration::from_nanos(waited);
            let t = Instant::now();
            if ran > 0 {
                last_busy = t;
            }
            let busy = (idle || ran > 0) && cpus_busy(cpus);
            if idle && (waited > STARVED || busy) {
                tracing::debug!(
                    ?waited,
                    busy,
                    ?hold,
                    "ring threads kept from a CPU: SCHED_OTHER"
                );
                self.set_all(&tids, false);
                idle = false;
                hold_until = t + hold;
                // Starved again soon after: the CPUs are busy with other work for a while.
                hold = (hold * 2).min(HOLD_MAX);
            } else if idle && t.duration_since(last_busy) >= QUIET_AFTER {
                self.set_all(&tids, false);
                idle = false;
            } else if idle && t.duration_since(idle_since) >= HOLD_MAX {
                hold = HOLD_MIN;
            } else if !idle && ran > 0 && !busy && t >= hold_until {
                self.set_all(&tids, true);
                idle = true;
                idle_since = t;
            }
            period = if t.duration_since(last_busy) < QUIET_AFTER {
                BUSY_PERIOD
            } else {
                QUIET_PERIOD
            };
        }
        if idle {
            let tids = lock(&self.tids).clone();
            self.set_all(&tids, false);
        }
    }
}

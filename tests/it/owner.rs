//! Which processes count as alive for the owners of active snapshots and mounts
//! (`imgfs::owner::process_start_time`), which decides what a later command may clean up.

use std::time::{Duration, Instant};

fn leader_state(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().next().map(str::to_owned)
}

/// A killed img's main thread can end before its other threads, which still hold the
/// store's lock: until they end, the process counts as alive.
#[test]
fn a_process_whose_main_thread_ended_first_lives_until_its_last_thread_ends() {
    // The main thread ends with exit(2), not exit_group(2), while a thread sleeps on.
    let script = format!(
        "import ctypes, threading, time\n\
         threading.Thread(target=time.sleep, args=(2,)).start()\n\
         ctypes.CDLL(None).syscall({}, 0)\n",
        libc::SYS_exit
    );
    let mut child = std::process::Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .spawn()
        .expect("python3 (tools/setup installs it)");
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    while leader_state(pid).as_deref() != Some("Z") {
        assert!(Instant::now() < deadline, "the main thread did not end");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        imgfs::owner::process_start_time(pid).is_some(),
        "a thread still runs: the process is not gone"
    );
    while imgfs::owner::process_start_time(pid).is_some() {
        assert!(Instant::now() < deadline, "the process did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        leader_state(pid).as_deref(),
        Some("Z"),
        "a zombie, not yet reaped"
    );
    child.wait().unwrap();
}

//! Tests of `StateLock`: one holder at a time, waiting for it, and release when it dies.

use super::*;

#[test]
fn a_held_lock_refuses_a_second_holder_and_names_the_pid() {
    let dir = tempfile::tempdir().unwrap();
    let held = StateLock::acquire(dir.path(), false, |_| panic!("free lock")).unwrap();
    // A second open file description conflicts under flock(2) even in one process.
    let err = StateLock::acquire(dir.path(), false, |_| panic!("no wait")).unwrap_err();
    let LockError::Held(contention) = &err else {
        panic!("{err}")
    };
    assert_eq!(contention.pid, Some(std::process::id()));
    assert_eq!(
        err.to_string(),
        format!(
            "the lock on {} is held by pid {}",
            dir.path().display(),
            std::process::id()
        )
    );
    drop(held);
    StateLock::acquire(dir.path(), false, |_| panic!("released")).unwrap();
}

#[test]
fn a_waiting_acquire_reports_once_and_gets_the_lock_when_released() {
    let dir = tempfile::tempdir().unwrap();
    let held = StateLock::acquire(dir.path(), true, |_| panic!("free lock")).unwrap();
    let (tx, rx) = mpsc::channel();
    let path = dir.path().to_path_buf();
    let waiter = std::thread::spawn(move || {
        let mut calls = 0;
        let lock = StateLock::acquire(&path, true, |c| {
            calls += 1;
            tx.send(c.waiting_message()).unwrap();
        })
        .unwrap();
        (calls, lock)
    });
    let message = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(
        message,
        format!(
            "waiting for the lock on {} held by pid {}",
            dir.path().display(),
            std::process::id()
        )
    );
    assert!(
        !waiter.is_finished(),
        "the waiter blocks while the lock is held"
    );
    drop(held);
    let (calls, lock) = waiter.join().unwrap();
    assert_eq!(calls, 1);
    let pid = std::fs::read_to_string(lock.path()).unwrap();
    assert_eq!(pid.trim(), std::process::id().to_string());
}

#[test]
fn the_lock_is_released_when_its_holder_process_dies() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("lock");
    // flock(1) takes the lock and, without forking, becomes `sleep`, which holds it.
    let mut child = Command::new("flock")
        .arg("--no-fork")
        .arg(&lock)
        .args(["sleep", "30"])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match StateLock::acquire(dir.path(), false, |_| {}) {
            Err(LockError::Held(_)) => break,
            Ok(l) => {
                drop(l);
                assert!(
                    std::time::Instant::now() < deadline,
                    "flock never took the lock"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{e}"),
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    StateLock::acquire(dir.path(), false, |_| panic!("dead holder")).unwrap();
}

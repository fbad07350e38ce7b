//! Model-based property tests: random sequences of file operations applied both to an active imgfs
//! snapshot (through `Tree`) and to a plain directory (through the kernel), which must agree on
//! every result and on the whole tree after every commit; committed snapshots must keep reading
//! exactly as they did when they were committed, after the store is reopened, and after each
//! newer snapshot is removed.
//!
//! The plain directory is the model: the kernel's file systems are the reference for POSIX
//! behaviour, so this needs no hand-written model of rename or truncate that could share imgfs's
//! misunderstandings. The cost is that the test needs root (lchown, `trusted.` xattrs) and a file
//! system with user xattrs under the temporary directory.
//!
//! What the kernel or `Tree`'s caller decides rather than `Tree` is kept out of the generated
//! sequences, so that a disagreement says something about imgfs: permission checks and user
//! xattrs on symlinks (the VFS refuses them before a FUSE file system is asked), clearing setuid
//! on chown (the kernel sends it as a mode change), and the group of new entries in setgid
//! directories (`Tree::mknod` takes the owner its caller gives). Symlink targets are relative and
//! never contain `..`: the plain directory cannot be made a chroot, so a target that climbs out
//! of it would resolve differently from imgfs's chroot-like `Tree::resolve` for a dull reason.
//!
//! The parts: `ops` (the operations and their generators), `snap` (what a tree looks like, read
//! from either side, and the differences), `apply` (one operation on either side) and `harness`
//! (one run of a sequence). The tests are here and in `found_bugs`.

mod apply;
mod found_bugs;
mod harness;
mod ops;
mod snap;

use imgfs::RenameMode;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use self::apply::{apply_plain, apply_tree};
use self::harness::Harness;
use self::ops::{Op, Perm, Pick, op};

/// Small chunks make chunk boundaries frequent: writes of up to 20 KiB span up to six of them.
const CHUNK: u64 = 4096;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    ProptestConfig {
        cases,
        // A failure is turned into a named regression test below, which says what it pins;
        // proptest's own regression files would be written into the source tree by every run.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// False, after saying so, where the model tests cannot run: they need root for lchown and
/// `trusted.` xattrs. CI runs as root, so there they must run.
fn have_root() -> bool {
    if is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "the model tests need root (lchown, trusted xattrs)"
    );
    eprintln!("skipping a model test: it needs root (lchown, trusted xattrs)");
    false
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn imgfs_agrees_with_a_plain_directory(ops in vec(op(), 1..=40)) {
        if !have_root() {
            return Ok(());
        }
        Harness::new().run(ops).map_err(TestCaseError::fail)?;
    }
}

// ---- fixed sequences ----

/// Runs a concrete sequence, panicking on the first difference.
fn run(ops: &[Op]) {
    let ops = ops.iter().map(|op| op.map(|p| Pick::Path(p.clone())));
    if let Err(e) = Harness::new().run(ops) {
        panic!("{e}");
    }
}

/// The errnos the plain directory and imgfs fail the last of `ops` with, after running the
/// others; both must fail.
fn errnos(ops: &[Op]) -> (i32, i32) {
    let (last, setup) = ops.split_last().expect("an operation");
    let mut h = Harness::new();
    for op in setup {
        h.step(op).unwrap_or_else(|e| panic!("{e}"));
    }
    let plain = apply_plain(&h.plain, last).expect_err("the plain directory refuses");
    let tree = apply_tree(h.tree(), last).expect_err("imgfs refuses");
    (plain, tree.errno())
}

fn mkdir(path: &str) -> Op {
    Op::Mkdir {
        path: path.into(),
        perm: Perm(0o755),
    }
}

fn create(path: &str) -> Op {
    Op::Create {
        path: path.into(),
        perm: Perm(0o644),
    }
}

fn rename(from: &str, to: &str, mode: RenameMode) -> Op {
    Op::Rename {
        from: from.into(),
        to: to.into(),
        mode,
    }
}

// Each pair `both_allowed` accepts, shown to occur. If one of these fails because imgfs now
// reports what Linux does, drop its pair from `both_allowed`.

#[test]
fn rename_of_a_file_onto_its_nonempty_parent_may_fail_either_way() {
    if !have_root() {
        return;
    }
    let ops = [
        mkdir("a"),
        create("a/x"),
        rename("a/x", "a", RenameMode::Replace),
    ];
    assert_eq!(errnos(&ops), (libc::ENOTEMPTY, libc::EISDIR));
    run(&ops);
}

#[test]
fn noreplace_of_a_directory_onto_a_name_below_it_may_fail_either_way() {
    if !have_root() {
        return;
    }
    let ops = [
        mkdir("a"),
        mkdir("a/b"),
        rename("a", "a/b", RenameMode::NoReplace),
    ];
    assert_eq!(errnos(&ops), (libc::EEXIST, libc::EINVAL));
    run(&ops);
}

#[test]
fn exchange_of_a_directory_with_a_missing_name_below_it_may_fail_either_way() {
    if !have_root() {
        return;
    }
    let ops = [mkdir("a"), rename("a", "a/b", RenameMode::Exchange)];
    assert_eq!(errnos(&ops), (libc::ENOENT, libc::EINVAL));
    run(&ops);
}

#[test]
fn hard_link_of_a_directory_onto_an_existing_name_may_fail_either_way() {
    if !have_root() {
        return;
    }
    let ops = [
        mkdir("a"),
        create("b"),
        Op::Link {
            from: "a".into(),
            to: "b".into(),
        },
    ];
    assert_eq!(errnos(&ops), (libc::EEXIST, libc::EPERM));
    run(&ops);
}

#[test]
fn data_across_chunk_boundaries_survives_commits_truncation_and_removal() {
    if !have_root() {
        return;
    }
    let write = |path: &str, offset, len, seed| Op::Write {
        path: path.into(),
        offset,
        len,
        seed,
    };
    let truncate = |size| Op::Truncate {
        path: "f".into(),
        size,
    };
    run(&[
        create("f"),
        write("f", CHUNK - 3, 20 * 1024, 7),
        Op::Commit,
        truncate(2 * CHUNK + 1),
        write("f", 3 * CHUNK + 5, 100, 9),
        Op::Link {
            from: "f".into(),
            to: "g".into(),
        },
        Op::Commit,
        truncate(0),
        write("g", CHUNK, 1, 0),
        Op::Reopen,
        write("g", 0, CHUNK as usize, 3),
    ]);
}

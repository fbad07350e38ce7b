//! Bad input: each case exits non-zero with a message naming the problem (file and line for
//! Dockerfiles) and leaves no image under the tag.

use crate::{Rig, can_run, context};

/// Builds `dockerfile` as `broken`, expecting failure; returns stderr.
fn fails(rig: &Rig, dockerfile: &str, files: &[(&str, &str)]) -> String {
    let ctx = context(dockerfile, files);
    let out = rig.img(&["build", "-t", "broken", ctx.path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the build should fail:\n{stderr}");
    let ls = rig.img_ok(&["ls"]);
    assert!(!ls.contains("broken"), "no image under the tag:\n{ls}");
    stderr
}

#[test]
fn unknown_instruction_names_file_and_line() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    let err = fails(&rig, "FROM busybox\nRUN true\nFOOBAR x\n", &[]);
    assert!(err.contains("Dockerfile:3"), "{err}");
    assert!(err.to_lowercase().contains("unknown instruction"), "{err}");
}

#[test]
fn malformed_syntax_names_file_and_line() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    let err = fails(&rig, "FROM busybox\n\nCOPY --frm=x a /b\n", &[("a", "")]);
    assert!(err.contains("Dockerfile:3"), "{err}");
    let err = fails(&rig, "FROM busybox\nRUN <<EOF\necho never ends\n", &[]);
    assert!(err.contains("Dockerfile:2"), "{err}");
}

#[test]
fn copy_of_a_missing_file_names_it() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    let err = fails(&rig, "FROM busybox\nCOPY missing.txt /x\n", &[]);
    assert!(err.contains("missing.txt"), "{err}");
    assert!(err.contains("Dockerfile:2"), "{err}");
}

#[test]
fn copy_from_an_unknown_stage_fails() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    let err = fails(&rig, "FROM busybox\nCOPY --from=nosuchstage /a /b\n", &[]);
    assert!(err.contains("nosuchstage"), "{err}");
}

#[test]
fn a_failing_run_reports_the_command_and_exit_code() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    let err = fails(&rig, "FROM busybox\nRUN echo before && exit 42\n", &[]);
    assert!(err.contains("exit code: 42"), "{err}");
    assert!(err.contains("echo before && exit 42"), "{err}");
    assert!(err.contains("Dockerfile:2"), "{err}");
}

#[test]
fn a_missing_base_image_is_named() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    let err = fails(&rig, "FROM no-such-image:1.0\nRUN true\n", &[]);
    assert!(err.contains("no-such-image"), "{err}");
}

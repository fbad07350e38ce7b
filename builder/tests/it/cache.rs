//! The build cache: a rebuild with nothing changed runs nothing and gives the same image; a
//! changed context file re-runs from the first step that reads it; --no-cache runs everything.

use crate::{BACKENDS, Rig, can_run, context};

const DOCKERFILE: &str = r#"FROM busybox
RUN echo "RAN""-FIRST" && echo first > /first
COPY app.txt /app/
RUN echo "RAN""-AFTER-COPY" && cat /app/app.txt > /app/copy
COPY other.txt /app/
"#;

fn build(rig: &Rig, ctx: &std::path::Path, backend: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec!["build", "--backend", backend, "-t", "cached"];
    args.extend_from_slice(extra);
    args.push(ctx.to_str().unwrap());
    let out = rig.img(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let digest = rig
        .img_ok(&["inspect", "cached"])
        .lines()
        .find(|l| l.contains("\"Digest\""))
        .unwrap()
        .to_owned();
    (stderr, digest)
}

#[test]
fn rebuilds_run_only_what_changed() {
    if !can_run() {
        return;
    }
    for backend in BACKENDS {
        let rig = Rig::create();
        let ctx = context(DOCKERFILE, &[("app.txt", "v1\n"), ("other.txt", "o\n")]);
        let (log, first) = build(&rig, ctx.path(), backend, &[]);
        assert!(
            log.contains("RAN-FIRST") && log.contains("RAN-AFTER-COPY"),
            "{log}"
        );

        let (log, again) = build(&rig, ctx.path(), backend, &[]);
        assert!(
            !log.contains("RAN-"),
            "{backend}: a cached rebuild runs nothing:\n{log}"
        );
        assert_eq!(
            first, again,
            "{backend}: a cached rebuild gives the same image"
        );

        // A moved context with the same content still hits: paths on disk are not in the key.
        let moved = context(DOCKERFILE, &[("app.txt", "v1\n"), ("other.txt", "o\n")]);
        let (log, _) = build(&rig, moved.path(), backend, &[]);
        assert!(!log.contains("RAN-"), "{backend}: {log}");

        std::fs::write(ctx.path().join("app.txt"), "v2\n").unwrap();
        let (log, changed) = build(&rig, ctx.path(), backend, &[]);
        assert!(
            !log.contains("RAN-FIRST"),
            "{backend}: steps before the COPY stay cached:\n{log}"
        );
        assert!(log.contains("RAN-AFTER-COPY"), "{backend}: {log}");
        assert_ne!(first, changed);

        let (log, _) = build(&rig, ctx.path(), backend, &["--no-cache"]);
        assert!(
            log.contains("RAN-FIRST") && log.contains("RAN-AFTER-COPY"),
            "{backend}: {log}"
        );
    }
}

#[test]
fn dockerignored_files_do_not_invalidate_the_cache() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    let ctx = context(
        "FROM busybox\nCOPY . /src/\nRUN echo \"RAN\"\"-AFTER-COPY\"\n",
        &[(".dockerignore", "*.log\n"), ("a.txt", "a"), ("b.log", "1")],
    );
    let (log, first) = build(&rig, ctx.path(), "fuse", &[]);
    assert!(log.contains("RAN-AFTER-COPY"));
    std::fs::write(ctx.path().join("b.log"), "2").unwrap();
    let (log, again) = build(&rig, ctx.path(), "fuse", &[]);
    assert!(!log.contains("RAN-AFTER-COPY"), "{log}");
    assert_eq!(first, again);
}

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
    let stderr = rig.img_ok_stderr(&args);
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

const FROM_DOCKERFILE: &str = r#"FROM busybox AS src
COPY a.txt /a.txt
COPY b.txt /b.txt
FROM busybox
COPY --from=src /a.txt /a.txt
RUN echo "RAN""-AFTER-FROM" && cat /a.txt > /copy
"#;

/// A `COPY --from` is cached by the content it copies, as BuildKit caches it: a change in the
/// source stage that the COPY does not read keeps the steps after it cached. The digest of
/// what it reads is remembered per source snapshot (`<state>/cache/sums`), so a rebuild with
/// nothing changed does not mount the source to hash it again; `img prune` forgets them.
#[test]
fn copy_from_is_cached_by_the_content_it_copies() {
    if !can_run() {
        return;
    }
    for backend in BACKENDS {
        let rig = Rig::create();
        let ctx = context(FROM_DOCKERFILE, &[("a.txt", "a1\n"), ("b.txt", "b1\n")]);
        let sums = rig.state.join("cache/sums");
        let remembered = || std::fs::read_dir(&sums).map_or(0, |d| d.count());
        let (log, first) = build(&rig, ctx.path(), backend, &[]);
        assert!(log.contains("RAN-AFTER-FROM"), "{backend}: {log}");
        assert_eq!(remembered(), 1, "{backend}: one source digest");

        let (log, again) = build(&rig, ctx.path(), backend, &[]);
        assert!(!log.contains("RAN-"), "{backend}: {log}");
        assert_eq!(first, again, "{backend}");

        // b.txt is not copied: the source stage changes, what the COPY reads does not.
        std::fs::write(ctx.path().join("b.txt"), "b2\n").unwrap();
        let (log, _) = build(&rig, ctx.path(), backend, &[]);
        assert!(!log.contains("RAN-"), "{backend}: {log}");
        assert_eq!(remembered(), 2, "{backend}: a digest per source snapshot");

        std::fs::write(ctx.path().join("a.txt"), "a2\n").unwrap();
        let (log, changed) = build(&rig, ctx.path(), backend, &[]);
        assert!(log.contains("RAN-AFTER-FROM"), "{backend}: {log}");
        assert_ne!(first, changed, "{backend}");

        rig.img_ok(&["prune"]);
        assert_eq!(remembered(), 0, "{backend}: prune forgets the digests");
        let (log, _) = build(&rig, ctx.path(), backend, &[]);
        assert!(log.contains("RAN-AFTER-FROM"), "{backend}: {log}");
    }
}

/// A build whose every step is cached opens no snapshot store (for fuse, a rocksdb open that
/// writes and syncs); one that runs a step, or writes the image's tree, opens it.
#[test]
fn a_fully_cached_build_leaves_the_backend_closed() {
    if !can_run() {
        return;
    }
    for backend in BACKENDS {
        let rig = Rig::create();
        let ctx = context(FROM_DOCKERFILE, &[("a.txt", "a1\n"), ("b.txt", "b1\n")]);
        let opened = |extra: &[&str]| {
            let mut args = vec!["-d", "build", "--backend", backend, "-t", "lazy"];
            args.extend_from_slice(extra);
            args.push(ctx.path().to_str().unwrap());
            let out = rig.img(&args);
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(out.status.success(), "{backend}: {stderr}");
            stderr.contains("opening the snapshot backend")
        };
        assert!(opened(&[]), "{backend}: the first build runs steps");
        assert!(
            !opened(&[]),
            "{backend}: a cached rebuild opened the backend"
        );
        let tar = rig.dir.path().join(format!("{backend}.tar"));
        let output = format!("type=tar,dest={}", tar.display());
        if let Some(user) = crate::test_user() {
            nix::unistd::chown(rig.dir.path(), Some(user.uid), Some(user.gid)).unwrap();
        }
        assert!(
            opened(&["-o", &output]),
            "{backend}: the tree output needs it"
        );
        assert!(std::fs::metadata(&tar).unwrap().len() > 0);
    }
}

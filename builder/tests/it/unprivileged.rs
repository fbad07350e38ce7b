//! img as an ordinary user: it enters a user namespace of its own (newuidmap/newgidmap with the
//! user's subordinate ranges), mounts imgfs (or overlayfs with userxattr) there and runs runc
//! inside, and the image it builds is the one root builds, owners included, on both backends.
//! A SIGINT to the img the user started stops the build inside, as it stops root's.
//!
//! Runs as the users tools/setup creates: `tests`, with /etc/subuid and /etc/subgid ranges, and
//! `tests-nosub`, without, for whom img maps only the user's own id. /dev/fuse is made usable by
//! users (mode 0666), as distributions ship it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use crate::{Rig, base, can_run, context, normalized_config};

const USER: &str = "tests";
const USER_WITHOUT_RANGES: &str = "tests-nosub";

fn as_user(state: &Path, home: &Path, args: &[&str]) -> Output {
    run_as(USER, state, home, args)
}

fn run_as(user: &str, state: &Path, home: &Path, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args([
            &format!("--reuid={user}"),
            &format!("--regid={user}"),
            "--init-groups",
        ])
        .arg(env!("CARGO_BIN_EXE_img"))
        .arg("-s")
        .arg(state)
        .args(args)
        .env("HOME", home)
        .env_remove("XDG_DATA_HOME")
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn an_ordinary_user_builds_the_image_root_builds() {
    if !can_run() || !tests::can_run(true, &["setpriv", "newuidmap", "newgidmap"]) {
        return;
    }
    std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(0o666)).unwrap();
    let rig = Rig::create();
    let ctx = context(
        "FROM busybox AS base
RUN touch /a /b /c && chown 1000:1000 /a && chown 65534:65534 /b && mkdir /d && chown 2000:3000 /d
RUN echo 'app:x:2000:2000::/home/app:/bin/sh' >> /etc/passwd && echo 'app:x:2000:' >> /etc/group
USER app
RUN id > /tmp/ids
USER root
FROM busybox
COPY --from=base /a /copied-a
COPY --from=base --chown=1234:5678 /b /copied-b
COPY --from=base /d /d
COPY --from=base /etc/passwd /etc/group /etc/
RUN echo built > /built && mkdir /owned && chown 2000:3000 /owned && touch /nobody \
    && chown 65534:65534 /nobody
",
        &[],
    );
    let theirs = rig.img_build(ctx.path(), "fuse", "as-root", &[]);

    // A home and state the user owns; the context and base image readable by it.
    let home = tempfile::tempdir_in("/var/tmp").unwrap();
    let uid = nix::unistd::User::from_name(USER)
        .unwrap()
        .expect("user tests (tools/setup)");
    nix::unistd::chown(home.path(), Some(uid.uid), Some(uid.gid)).unwrap();
    for p in [ctx.path(), home.path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let archive = home.path().join("busybox.tar");
    std::fs::copy(&base().docker_archive, &archive).unwrap();
    std::fs::set_permissions(&archive, std::fs::Permissions::from_mode(0o644)).unwrap();
    let state = home.path().join("state");

    ok(as_user(
        &state,
        home.path(),
        &["load", "-i", archive.to_str().unwrap()],
    ));
    for backend in crate::BACKENDS {
        let tag = format!("as-user-{backend}");
        let context = ctx.path().to_str().unwrap();
        ok(as_user(
            &state,
            home.path(),
            &["build", "--backend", backend, "-t", &tag, context],
        ));
        let saved = home.path().join(format!("{tag}.tar"));
        let saved_arg = saved.to_str().unwrap();
        ok(as_user(
            &state,
            home.path(),
            &["save", "--format", "oci-archive", "-o", saved_arg, &tag],
        ));
        let ours = tests::images::ImageView::of_oci_archive(&saved, "latest").unwrap();
        let diff = ours.tree.diff(&theirs.tree);
        assert!(
            diff.is_empty(),
            "{backend} as {USER} vs as root:\n{}",
            diff.join("\n")
        );
        assert_eq!(
            normalized_config(&ours.config),
            normalized_config(&theirs.config)
        );
        let owned = ours.tree.get("owned").unwrap();
        assert_eq!(
            (owned.uid, owned.gid),
            (2000, 3000),
            "{backend}: owners survive the user namespace"
        );
        let nobody = ours.tree.get("nobody").unwrap();
        assert_eq!((nobody.uid, nobody.gid), (65534, 65534), "{backend}");
    }
    // The state belongs to the user, not to a subordinate id.
    let meta = std::fs::metadata(state.join("images.json")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), uid.uid.as_raw());
}

/// Pull, build FROM the pulled image and push, all as the user; root pulls what the user
/// pushed and gets the same digest.
#[test]
fn an_ordinary_user_pulls_builds_and_pushes() {
    if !can_run()
        || !tests::can_run(
            true,
            &["setpriv", "newuidmap", "newgidmap", "docker-registry"],
        )
    {
        return;
    }
    std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(0o666)).unwrap();
    let registry = tests::registry::TestRegistry::start().unwrap();
    let host = registry.host().to_owned();
    let rig = Rig::create();
    rig.img_ok(&["push", "busybox", &format!("{host}/base/busybox:1")]);

    let home = tempfile::tempdir_in("/var/tmp").unwrap();
    let uid = nix::unistd::User::from_name(USER)
        .unwrap()
        .expect("user tests (tools/setup)");
    nix::unistd::chown(home.path(), Some(uid.uid), Some(uid.gid)).unwrap();
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ctx = context(
        &format!("FROM {host}/base/busybox:1\nRUN echo pushed > /pushed && chown 1000 /pushed\n"),
        &[],
    );
    std::fs::set_permissions(ctx.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = home.path().join("state");
    let target = format!("{host}/user/app:1");
    ok(as_user(
        &state,
        home.path(),
        &["build", "-t", &target, ctx.path().to_str().unwrap()],
    ));
    let pushed = ok(as_user(&state, home.path(), &["push", &target]));
    let digest = |out: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix("Digest: "))
            .unwrap_or_else(|| panic!("no digest in {out}"))
            .trim()
            .to_owned()
    };
    let pulled = rig.img_ok(&["pull", &target]);
    assert_eq!(digest(&pushed), digest(&pulled));
    let view = rig.img_view(&target);
    let e = view.tree.get("pushed").unwrap();
    assert_eq!((e.uid, e.gid), (1000, 0));
}

/// Without /etc/subuid and /etc/subgid lines img maps only the user's own id: a build whose RUN
/// steps stay root works, with one warning line saying what will not; a chown to another id
/// fails the step with its command and exit code.
#[test]
fn a_user_without_subordinate_ids_builds_as_root_only_after_one_warning() {
    if !can_run() || !tests::can_run(true, &["setpriv", "newuidmap", "newgidmap"]) {
        return;
    }
    std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(0o666)).unwrap();
    for file in ["/etc/subuid", "/etc/subgid"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with(&format!("{USER_WITHOUT_RANGES}:"))),
            "{USER_WITHOUT_RANGES} must have no {file} range (tools/setup)"
        );
    }
    let user = nix::unistd::User::from_name(USER_WITHOUT_RANGES)
        .unwrap()
        .expect("user tests-nosub (tools/setup)");
    let home = tempfile::tempdir_in("/var/tmp").unwrap();
    nix::unistd::chown(home.path(), Some(user.uid), Some(user.gid)).unwrap();
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let archive = home.path().join("busybox.tar");
    std::fs::copy(&base().docker_archive, &archive).unwrap();
    std::fs::set_permissions(&archive, std::fs::Permissions::from_mode(0o644)).unwrap();
    let state = home.path().join("state");
    let img = |args: &[&str]| run_as(USER_WITHOUT_RANGES, &state, home.path(), args);
    ok(img(&["load", "-i", archive.to_str().unwrap()]));

    let ctx = context("FROM busybox\nRUN echo hi > /hi\n", &[]);
    std::fs::set_permissions(ctx.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = img(&[
        "build",
        "--backend",
        "fuse",
        "-t",
        "hi",
        ctx.path().to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ok(out);
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.to_lowercase().contains("warning"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    for words in ["/etc/subuid", "/etc/subgid", "another user", "chown"] {
        assert!(warnings[0].contains(words), "{words} in {}", warnings[0]);
    }
    let saved = home.path().join("hi.tar");
    ok(img(&[
        "save",
        "--format",
        "oci-archive",
        "-o",
        saved.to_str().unwrap(),
        "hi",
    ]));
    let view = tests::images::ImageView::of_oci_archive(&saved, "latest").unwrap();
    let hi = view.tree.get("hi").expect("/hi in the image");
    assert_eq!((hi.uid, hi.gid, hi.size), (0, 0, Some(3)));

    let ctx = context("FROM busybox\nRUN echo hi > /hi && chown 1000 /hi\n", &[]);
    std::fs::set_permissions(ctx.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = img(&["build", "--backend", "fuse", ctx.path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("Dockerfile:2: RUN echo hi > /hi && chown 1000 /hi:")
            && stderr.contains("exit code: 1"),
        "{stderr}"
    );
}

/// `img doctor` as `tests` finds everything an unprivileged build needs, overlayfs in a user
/// namespace included (tried for real); as `tests-nosub` it names the missing ranges with the
/// command that adds them.
#[test]
fn doctor_passes_for_a_ready_user_and_prints_fixes_for_one_without_ranges() {
    if !can_run() || !tests::can_run(true, &["setpriv", "newuidmap", "newgidmap"]) {
        return;
    }
    std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(0o666)).unwrap();
    for (user, ready) in [(USER, true), (USER_WITHOUT_RANGES, false)] {
        let account = nix::unistd::User::from_name(user).unwrap().unwrap();
        let home = tempfile::tempdir_in("/var/tmp").unwrap();
        nix::unistd::chown(home.path(), Some(account.uid), Some(account.gid)).unwrap();
        let out = run_as(user, &home.path().join("state"), home.path(), &["doctor"]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(out.status.success(), ready, "{user}:\n{stdout}");
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("ok ") && l.contains("kernel overlayfs in a user namespace")),
            "{user}:\n{stdout}"
        );
        if !ready {
            for file in ["subuids", "subgids"] {
                let fix = format!("fix: sudo usermod --add-{file} 100000-165535 {user}");
                assert!(
                    stdout.lines().any(|l| l.trim() == fix),
                    "{fix} in\n{stdout}"
                );
            }
        }
    }
}

/// The user's `kill` names the img outside the namespaces, which passes the signal on to the
/// img inside: the build stops as root's does, with its step's processes.
#[test]
fn sigint_to_an_ordinary_users_img_stops_the_build_inside_its_namespace() {
    use crate::interrupt::{exit_code, sleeping, unique_sleep};
    if !can_run() || !tests::can_run(true, &["setpriv", "newuidmap", "newgidmap"]) {
        return;
    }
    std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(0o666)).unwrap();
    let home = tempfile::tempdir_in("/var/tmp").unwrap();
    let user = nix::unistd::User::from_name(USER)
        .unwrap()
        .expect("user tests (tools/setup)");
    nix::unistd::chown(home.path(), Some(user.uid), Some(user.gid)).unwrap();
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let archive = home.path().join("busybox.tar");
    std::fs::copy(&base().docker_archive, &archive).unwrap();
    std::fs::set_permissions(&archive, std::fs::Permissions::from_mode(0o644)).unwrap();
    let state = home.path().join("state");
    ok(as_user(
        &state,
        home.path(),
        &["load", "-i", archive.to_str().unwrap()],
    ));
    for backend in crate::BACKENDS {
        let seconds = unique_sleep();
        let ctx = context(&format!("FROM busybox\nRUN sleep {seconds}\n"), &[]);
        let log = std::fs::File::create(home.path().join(format!("{backend}.log"))).unwrap();
        // setpriv execs img: the child is the img outside the namespaces.
        let mut child = Command::new("setpriv")
            .args([
                &format!("--reuid={USER}"),
                &format!("--regid={USER}"),
                "--init-groups",
            ])
            .arg(env!("CARGO_BIN_EXE_img"))
            .arg("-s")
            .arg(&state)
            .args(["build", "--backend", backend, "-t", "stopped"])
            .arg(ctx.path())
            .env("HOME", home.path())
            .env_remove("XDG_DATA_HOME")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        while sleeping(&seconds).is_empty() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "{backend}: the build ended before its step ran"
            );
            assert!(
                start.elapsed().as_secs() < 120,
                "{backend}: the step never started"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        let code = exit_code(&mut child);
        let log = std::fs::read_to_string(home.path().join(format!("{backend}.log"))).unwrap();
        assert_eq!(code, Some(130), "{backend}:\n{log}");
        assert_eq!(
            sleeping(&seconds),
            Vec::<i32>::new(),
            "{backend}: the step still runs"
        );
        let ls = as_user(&state, home.path(), &["ls"]);
        let stderr = String::from_utf8_lossy(&ls.stderr);
        assert!(!stderr.contains("removed"), "{backend}: {stderr}");
        assert!(
            !ok(ls).contains("stopped"),
            "{backend}: an image was tagged"
        );
    }
}

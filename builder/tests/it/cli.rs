//! `img build`'s command line as docker users type it: -f, a Dockerfile or a context on stdin,
//! --label, and the -o outputs.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::{Rig, can_run, context};

/// `img build ARGS` with `stdin` fed to it; returns (success, stderr).
fn build_with_stdin(rig: &Rig, args: &[&str], stdin: &[u8]) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_img"))
        .arg("-s")
        .arg(&rig.state)
        .arg("build")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn dockerfile_from_a_path_or_stdin_and_context_from_stdin() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    let ctx = context(
        "this is not a Dockerfile",
        &[("a.txt", "from the context\n")],
    );
    let df = ctx.path().join("other.Dockerfile");
    std::fs::write(&df, "FROM busybox\nCOPY a.txt /a.txt\n").unwrap();
    rig.img_ok(&[
        "build",
        "-f",
        df.to_str().unwrap(),
        "-t",
        "by-path",
        ctx.path().to_str().unwrap(),
    ]);
    assert!(rig.img_view("by-path").tree.get("a.txt").is_some());

    let (ok, err) = build_with_stdin(
        &rig,
        &["-f", "-", "-t", "df-stdin", ctx.path().to_str().unwrap()],
        b"FROM busybox\nCOPY a.txt /b.txt\n",
    );
    assert!(ok, "{err}");
    assert!(rig.img_view("df-stdin").tree.get("b.txt").is_some());

    // `img build -` with only a Dockerfile: there is no context to COPY from.
    let (ok, err) = build_with_stdin(
        &rig,
        &["-t", "no-ctx", "-"],
        b"FROM busybox\nRUN echo hi > /hi\n",
    );
    assert!(ok, "{err}");
    let (ok, err) = build_with_stdin(
        &rig,
        &["-t", "no-ctx2", "-"],
        b"FROM busybox\nCOPY a.txt /\n",
    );
    assert!(!ok);
    assert!(err.contains("no build context"), "{err}");

    // `img build -` with a context tar holding the Dockerfile.
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("Dockerfile", &b"FROM busybox\nCOPY c.txt /c.txt\n"[..]),
        ("c.txt", b"from a tar\n"),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, data).unwrap();
    }
    let (ok, err) = build_with_stdin(&rig, &["-t", "tar-ctx", "-"], &tar.into_inner().unwrap());
    assert!(ok, "{err}");
    assert!(rig.img_view("tar-ctx").tree.get("c.txt").is_some());
}

#[test]
fn labels_and_outputs() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    let ctx = context(
        "FROM busybox\nLABEL from=dockerfile keep=yes\nRUN echo out > /out\n",
        &[],
    );
    let dir = rig.dir.path();
    let oci = dir.join("image-oci.tar");
    let docker = dir.join("image-docker.tar");
    let rootfs = dir.join("rootfs.tar");
    let local = dir.join("local");
    rig.img_ok(&[
        "build",
        "--label",
        "from=cli",
        "-t",
        "labelled",
        "-o",
        &format!("type=oci,dest={}", oci.display()),
        "-o",
        &format!("type=docker,dest={}", docker.display()),
        "-o",
        &format!("type=tar,dest={}", rootfs.display()),
        "-o",
        &format!("type=local,dest={}", local.display()),
        ctx.path().to_str().unwrap(),
    ]);
    let view = rig.img_view("labelled");
    assert_eq!(
        view.config["Labels"]["from"], "cli",
        "--label wins over LABEL"
    );
    assert_eq!(view.config["Labels"]["keep"], "yes");
    for (transport, path) in [("oci-archive", &oci), ("docker-archive", &docker)] {
        let out = Command::new("skopeo")
            .args(["inspect", "--config"])
            .arg(format!("{transport}:{}", path.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(std::fs::read_to_string(local.join("out")).unwrap(), "out\n");
    let listing = Command::new("tar")
        .arg("-tf")
        .arg(&rootfs)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.lines().any(|l| l.trim_start_matches("./") == "out"),
        "{listing}"
    );
    assert!(
        listing.lines().any(|l| l.contains("bin/busybox")),
        "the whole tree, not a layer"
    );
}

/// `-o type=tar` and `type=local` export through the build's own backend: an overlayfs build
/// never creates (or opens) the imgfs store, and both backends write the same tar, byte for
/// byte, and the same tree.
#[test]
fn tree_outputs_come_from_the_builds_own_backend() {
    if !can_run() {
        return;
    }
    let rig = Rig::create_on("overlayfs");
    let ctx = context(
        "FROM busybox\nRUN mkdir -p /app && echo one > /app/one && ln /app/one /app/two\n\
         RUN rm /etc/hostname && chmod 4755 /app\n",
        &[],
    );
    let imgfs_store = rig.state.join("imgfs");
    assert!(
        !imgfs_store.exists(),
        "img load --backend overlayfs made an imgfs store"
    );
    let mut tars = Vec::new();
    let mut trees = Vec::new();
    for backend in crate::BACKENDS.iter().rev() {
        let dir = rig.dir.path().join(backend);
        let tar = dir.join("rootfs.tar");
        let local = dir.join("local");
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(user) = crate::test_user() {
            nix::unistd::chown(&dir, Some(user.uid), Some(user.gid)).unwrap();
        }
        rig.img_ok(&[
            "build",
            "--backend",
            backend,
            "-o",
            &format!("type=tar,dest={}", tar.display()),
            "-o",
            &format!("type=local,dest={}", local.display()),
            ctx.path().to_str().unwrap(),
        ]);
        if *backend == "overlayfs" {
            assert!(
                !imgfs_store.exists(),
                "an overlayfs build created the imgfs store"
            );
        }
        tars.push(std::fs::read(&tar).unwrap());
        trees.push(tests::Manifest::of_dir(&local).unwrap());
    }
    assert!(
        tars[0] == tars[1],
        "overlayfs and fuse wrote different tars"
    );
    tests::assert_same(&trees[0], &trees[1]);
    let two = trees[0].get("app/two").expect("app/two");
    assert_eq!(trees[0].get("app/one").unwrap(), two);
    assert!(trees[0].get("etc/hostname").is_none());
    assert_eq!(trees[0].get("app").unwrap().mode, 0o4755);
}

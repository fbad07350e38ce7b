//! The image commands around builds: ls, tag, rm, inspect, save and load (checked with skopeo),
//! import, unpack, du and prune.

use std::process::Command;

use crate::{Rig, base, can_run, context};

#[test]
fn tag_ls_inspect_and_rm() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    rig.img_ok(&["tag", "busybox", "example.com/team/bb:1.0"]);
    let ls = rig.img_ok(&["ls"]);
    assert!(ls.starts_with("NAME"), "{ls}");
    for col in ["SIZE", "CREATED AT", "UPDATED AT", "DIGEST"] {
        assert!(ls.lines().next().unwrap().contains(col), "{ls}");
    }
    assert!(ls.contains("example.com/team/bb:1.0"), "{ls}");
    let inspect: serde_json::Value =
        serde_json::from_str(&rig.img_ok(&["inspect", "example.com/team/bb:1.0"])).unwrap();
    assert_eq!(inspect[0]["Config"]["Cmd"], serde_json::json!(["sh"]));
    rig.img_ok(&["rm", "example.com/team/bb:1.0"]);
    assert!(!rig.img_ok(&["ls"]).contains("example.com"));
    assert!(!rig.img(&["rm", "example.com/team/bb:1.0"]).status.success());
}

#[test]
fn saved_archives_load_in_skopeo_and_back() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    let ctx = context("FROM busybox\nRUN echo saved > /saved\n", &[]);
    rig.img_ok(&["build", "-t", "saved:1", ctx.path().to_str().unwrap()]);
    for (format, transport) in [
        ("docker-archive", "docker-archive"),
        ("oci-archive", "oci-archive"),
    ] {
        let archive = rig.dir.path().join(format!("{format}.tar"));
        rig.img_ok(&[
            "save",
            "--format",
            format,
            "-o",
            archive.to_str().unwrap(),
            "saved:1",
        ]);
        let out = Command::new("skopeo")
            .args(["inspect", "--config"])
            .arg(format!("{transport}:{}", archive.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let other = Rig::create();
        let loaded = other.img_ok(&["load", "-i", archive.to_str().unwrap()]);
        assert!(loaded.contains("Loaded image"), "{loaded}");
    }
}

/// Saves busybox from `rig` as a docker-archive whose manifest.json has `repo_tags` as its
/// RepoTags, and returns the archive's path.
fn archive_with_repo_tags(rig: &Rig, repo_tags: serde_json::Value) -> std::path::PathBuf {
    let saved = rig.dir.path().join("saved.tar");
    rig.img_ok(&[
        "save",
        "--format",
        "docker-archive",
        "-o",
        saved.to_str().unwrap(),
        "busybox",
    ]);
    let mut out = tar::Builder::new(Vec::new());
    let mut archive = tar::Archive::new(std::fs::File::open(&saved).unwrap());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        if name == "manifest.json" {
            let mut manifest: serde_json::Value = serde_json::from_slice(&data).unwrap();
            manifest[0]["RepoTags"] = repo_tags.clone();
            data = serde_json::to_vec(&manifest).unwrap();
        }
        let mut header = entry.header().clone();
        header.set_size(data.len() as u64);
        out.append_data(&mut header, &name, &data[..]).unwrap();
    }
    let rewritten = rig.dir.path().join("rewritten.tar");
    std::fs::write(&rewritten, out.into_inner().unwrap()).unwrap();
    rewritten
}

/// Docker refuses a docker-archive whose RepoTags entry has no tag (`invalid tag "latest"`).
#[test]
fn loading_an_archive_whose_repo_tag_is_only_latest_fails_naming_it() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    let lying = archive_with_repo_tags(&rig, serde_json::json!(["latest"]));

    let other = Rig::create();
    let loaded = other.img(&["load", "-i", lying.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&loaded.stderr);
    assert!(!loaded.status.success(), "{said}");
    assert!(said.contains("invalid tag \"latest\""), "{said}");
    let ls = other.img_ok(&["ls"]);
    assert!(!ls.lines().any(|l| l.starts_with("latest")), "{ls}");
}

/// An archive that names no image loads as Docker's dangling images do: listed as `<none>`,
/// usable by the ID `img load` prints until it is named or removed, kept by prune.
#[test]
fn an_image_an_archive_does_not_name_is_kept_and_usable_by_its_id() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    let unnamed = archive_with_repo_tags(&rig, serde_json::json!([]));

    let other = Rig::create();
    other.img_ok(&["rm", "busybox"]);
    other.img_ok(&["prune"]);
    let said = other.img_ok(&["load", "-i", unnamed.to_str().unwrap()]);
    let id = said
        .trim()
        .strip_prefix("Loaded image ID: sha256:")
        .unwrap_or_else(|| panic!("{said}"))
        .to_string();
    let ls = other.img_ok(&["ls"]);
    assert!(ls.lines().any(|l| l.starts_with("<none>")), "{ls}");
    let inspect: serde_json::Value =
        serde_json::from_str(&other.img_ok(&["inspect", &id[..12]])).unwrap();
    assert_eq!(inspect[0]["Id"], format!("sha256:{id}"));
    assert_eq!(inspect[0]["RepoTags"], serde_json::json!([]));
    other.img_ok(&["prune"]);
    other.img_ok(&[
        "unpack",
        &id[..12],
        other.dir.path().join("tree").to_str().unwrap(),
    ]);
    assert!(other.dir.path().join("tree/bin/busybox").exists());

    other.img_ok(&["tag", &id[..12], "named:1"]);
    let ls = other.img_ok(&["ls"]);
    assert!(!ls.lines().any(|l| l.starts_with("<none>")), "{ls}");
    assert!(ls.lines().any(|l| l.starts_with("named:1")), "{ls}");

    // Loaded again, then removed by ID: only the name is left.
    other.img_ok(&["rm", "named:1"]);
    other.img_ok(&["load", "-i", unnamed.to_str().unwrap()]);
    other.img_ok(&["rm", &id[..12]]);
    let ls = other.img_ok(&["ls"]);
    assert_eq!(ls.lines().count(), 1, "only the header is left: {ls}");
}

#[test]
fn import_then_unpack_gives_the_tree_back() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    let tar = tests::fixtures::busybox_rootfs_tar().unwrap();
    rig.img_ok(&[
        "import",
        tar.to_str().unwrap(),
        "imported",
        "-c",
        "CMD [\"echo\", \"hi\"]",
    ]);
    let dir = rig.dir.path().join("unpacked");
    rig.img_ok(&["unpack", "imported", dir.to_str().unwrap()]);
    let expected_dir = rig.dir.path().join("expected");
    std::fs::create_dir(&expected_dir).unwrap();
    tests::gnutar::extract_with_gnu_tar(&tar, &expected_dir).unwrap();
    tests::assert_same(
        &tests::Manifest::of_dir(&expected_dir).unwrap(),
        &tests::Manifest::of_dir(&dir).unwrap(),
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&rig.img_ok(&["inspect", "imported"])).unwrap();
    assert_eq!(
        inspect[0]["Config"]["Cmd"],
        serde_json::json!(["echo", "hi"])
    );
}

/// `img load` and `img import` unpack the image into the backend `--backend` or IMG_BACKEND
/// names (default fuse), as `docker load` and `docker import` do: a build FROM it then applies
/// no layer.
#[test]
fn load_and_import_unpack_the_image_into_the_backend_named() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    // `img du`'s snapshot lines, as (backend, ID).
    let snapshots = |rig: &Rig| -> Vec<(String, String)> {
        rig.img_ok(&["du"])
            .lines()
            .filter(|l| l.contains(" snapshot of an image's layers"))
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f[3].to_string(), f[0].to_string())
            })
            .collect()
    };
    let loaded = snapshots(&rig);
    assert_eq!(loaded.len(), 1, "Rig::create loads busybox: {loaded:?}");
    assert_eq!(loaded[0].0, "fuse");

    let tar = tests::fixtures::busybox_rootfs_tar().unwrap();
    let out = crate::img_command(rig.dir.path())
        .arg("-s")
        .arg(&rig.state)
        .env("IMG_BACKEND", "overlayfs")
        .args(["import", tar.to_str().unwrap(), "imported"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let on_overlayfs = |rig: &Rig| -> Vec<String> {
        let all = snapshots(rig);
        assert!(all.iter().any(|s| s == &loaded[0]), "{all:?}");
        all.into_iter()
            .filter(|(b, _)| b == "overlayfs")
            .map(|(_, id)| id)
            .collect()
    };
    let after_import = on_overlayfs(&rig);
    assert_eq!(after_import.len(), 1, "{after_import:?}");

    let archive = base().oci_archive.to_str().unwrap();
    rig.img_ok(&["load", "--backend", "overlayfs", "-i", archive]);
    let after_load = on_overlayfs(&rig);
    assert_eq!(after_load.len(), 2, "{after_load:?}");
    assert!(
        after_load.contains(&loaded[0].1),
        "busybox's snapshot, on overlayfs too: {after_load:?}"
    );

    // A build FROM it applies no layer (img -d logs each layer it applies).
    let ctx = context("FROM imported\nRUN echo built >/built\n", &[]);
    let build = |backend: &str| {
        rig.img_ok_stderr(&[
            "-d",
            "build",
            "--no-cache",
            "--backend",
            backend,
            "-t",
            "built",
            ctx.path().to_str().unwrap(),
        ])
    };
    let stderr = build("overlayfs");
    assert!(!stderr.contains("applying a layer"), "{stderr}");
    // Whereas on the backend the import did not unpack into, a step that runs does.
    let stderr = build("fuse");
    assert!(stderr.contains("applying a layer"), "{stderr}");
}

/// `img prune` frees what `img du` calls reclaimable, and du agrees afterwards.
#[test]
fn prune_frees_what_du_reports() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    let ctx = context(
        "FROM busybox\nRUN echo one > /one\nRUN echo two > /two\n",
        &[],
    );
    for backend in crate::BACKENDS {
        rig.img_ok(&[
            "build",
            "--backend",
            backend,
            "-t",
            "gone",
            ctx.path().to_str().unwrap(),
        ]);
    }
    rig.img_ok(&["rm", "gone"]);
    let du = rig.img_ok(&["du"]);
    let reclaimable = |du: &str| {
        du.lines()
            .find(|l| l.starts_with("Reclaimable:"))
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_owned()
    };
    assert_ne!(reclaimable(&du), "0B", "{du}");
    assert!(du.contains("true"), "{du}");
    rig.img_ok(&["prune"]);
    let du = rig.img_ok(&["du"]);
    assert_eq!(reclaimable(&du), "0B", "{du}");
    assert!(!du.lines().any(|l| l.contains(" true ")), "{du}");
    // What images still use is kept: busybox builds again from its snapshot.
    rig.img_ok(&["build", "-t", "again", ctx.path().to_str().unwrap()]);
}

#[test]
fn a_second_img_waits_for_the_state_lock() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    let mut holder = Command::new("flock")
        .arg(rig.state.join("lock"))
        .args(["sleep", "2"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = rig.img(&["ls"]);
    holder.wait().unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("waiting for the lock"), "{err}");
}

/// `kill -9` of img in the middle of a RUN step: the next img cleans up after it (the container,
/// the mounts), builds as before, and prune frees what the killed build left.
#[test]
fn a_build_killed_mid_step_leaves_a_usable_state() {
    if !can_run() {
        return;
    }
    use std::io::{BufRead, BufReader};
    let rig = Rig::create();
    for backend in crate::BACKENDS {
        let ctx = context(
            "FROM busybox\nRUN echo started > /started && echo STEP-STARTED && sleep 60\n",
            &[],
        );
        let mut child = Command::new(env!("CARGO_BIN_EXE_img"))
            .arg("-s")
            .arg(&rig.state)
            .args(["build", "--backend", backend, "-t", "killed"])
            .arg(ctx.path())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        // Wait until the container runs: its output comes after the step header.
        loop {
            let line = lines
                .next()
                .expect("img ended before the step ran")
                .unwrap();
            if line.trim() == "STEP-STARTED" {
                break;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();

        let good = context("FROM busybox\nRUN echo fine > /fine\n", &[]);
        rig.img_ok(&[
            "build",
            "--backend",
            backend,
            "-t",
            "after",
            good.path().to_str().unwrap(),
        ]);
        let ls = rig.img_ok(&["ls"]);
        assert!(!ls.contains("killed"), "{ls}");
        assert!(ls.contains("after"), "{ls}");
        let runc_list = Command::new("runc")
            .arg("--root")
            .arg(rig.state.join("runc"))
            .arg("list")
            .output()
            .unwrap();
        let runc_list = String::from_utf8_lossy(&runc_list.stdout);
        assert!(
            runc_list.lines().count() <= 1,
            "{backend}: containers left:\n{runc_list}"
        );
        rig.img_ok(&["prune"]);
        let du = rig.img_ok(&["du"]);
        assert!(!du.contains("interrupted"), "{backend}: {du}");
    }
}

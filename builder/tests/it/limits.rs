//! Layer limits through `img load|pull|build` (their options and `config.json`), sparse files
//! through load, unpack and `-o type=local` on both backends, and the node types `img unpack`
//! makes, compared with umoci's, on crafted layers.

use std::fs;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::Digest as _;
use tests::images::{self, Buildah};
use tests::layer::hostile;
use tests::layout::oci_image_from_layers;
use tests::registry::TestRegistry;

use crate::Rig;
use crate::registry::text;

/// A state dir with no image in it (no busybox: these tests bring their own layers).
fn empty_rig() -> Rig {
    let dir = crate::img_dir();
    let state = dir.path().join("img");
    let buildah = Buildah::new(&dir.path().join("buildah"), "vfs");
    Rig {
        dir,
        state,
        buildah,
    }
}

/// The OCI archive of the image `localhost/<tag>` made of `layers`, in the rig's directory.
fn archive(rig: &Rig, tag: &str, layers: &[&[u8]]) -> PathBuf {
    let layout = rig.dir.path().join(format!("{tag}-layout"));
    oci_image_from_layers(&layout, tag, layers).unwrap();
    let archive = rig.dir.path().join(format!("{tag}.tar"));
    images::oci_archive(&layout, &archive).unwrap();
    archive
}

/// Writes the state dir's `config.json` (making the state dir, the test user's if any).
fn write_config(rig: &Rig, json: &str) {
    fs::create_dir_all(&rig.state).unwrap();
    if let Some(user) = crate::test_user() {
        nix::unistd::chown(&rig.state, Some(user.uid), Some(user.gid)).unwrap();
    }
    fs::write(rig.state.join("config.json"), json).unwrap();
}

/// `img args...` that must fail; returns its output.
fn img_fails(rig: &Rig, args: &[&str]) -> String {
    let out = rig.img(args);
    assert!(
        !out.status.success(),
        "img {args:?} succeeded:\n{}",
        text(&out)
    );
    text(&out)
}

/// 96 MiB of one byte in 100 KB of gzip: past the ratio floor, 1,000 times its size.
fn byte_bomb() -> Vec<u8> {
    hostile::byte_bomb(b'A', 96 << 20)
}

#[test]
fn load_refuses_a_layer_past_the_ratio_unless_the_option_or_config_raises_it() {
    if !crate::can_run() {
        return;
    }
    let rig = empty_rig();
    let bomb = byte_bomb();
    let archive = archive(&rig, "bomb", &[&bomb]);
    let archive = archive.to_str().unwrap();
    let err = img_fails(&rig, &["load", "-i", archive]);
    assert!(
        err.contains("expands past 100 times its compressed size"),
        "{err}"
    );
    assert!(
        err.contains(r#"--max-layer-ratio / config "max_layer_ratio""#),
        "{err}"
    );
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bomb)));
    assert!(err.contains(&digest), "the error names the layer:\n{err}");
    assert!(
        !rig.img_ok(&["ls"]).contains("bomb"),
        "a refused image is not listed"
    );

    rig.img_ok(&["load", "-i", archive, "--max-layer-ratio=0"]);
    assert!(rig.img_ok(&["ls"]).contains("bomb"));

    let configured = empty_rig();
    write_config(&configured, r#"{"max_layer_ratio": 2000}"#);
    configured.img_ok(&["load", "-i", archive]);
}

#[test]
fn a_zero_bomb_is_stored_as_holes_so_the_ratio_lets_it_through() {
    if !crate::can_run() {
        return;
    }
    let rig = empty_rig();
    // 256 MiB of zeros in 256 KB: a thousand times its size, all of it holes.
    let bomb = hostile::zero_bomb(256 << 20);
    let archive = archive(&rig, "zeros", &[&bomb]);
    rig.img_ok(&["load", "-i", archive.to_str().unwrap()]);
    let out = rig.dir.path().join("out");
    rig.img_ok(&["unpack", "localhost/zeros", out.to_str().unwrap()]);
    let meta = fs::metadata(out.join("zeros")).unwrap();
    assert_eq!(meta.len(), 256 << 20);
    assert!(meta.blocks() * 512 < 1 << 20, "{} blocks", meta.blocks());
}

#[test]
fn pull_refuses_a_layer_over_the_configured_entry_cap_unless_the_option_raises_it() {
    if !crate::registry::can_run() {
        return;
    }
    let registry = TestRegistry::start().unwrap();
    let rig = empty_rig();
    let flood = hostile::many_entries_gzip(3000);
    let layout = rig.dir.path().join("layout");
    oci_image_from_layers(&layout, "many", &[&flood]).unwrap();
    let name = format!("{}/crafted/many:1", registry.host());
    images::run(Command::new("skopeo").args([
        "copy",
        "-q",
        "--dest-tls-verify=false",
        &format!("oci:{}:many", layout.display()),
        &format!("docker://{name}"),
    ]))
    .unwrap();
    write_config(&rig, r#"{"max_layer_entries": 1000}"#);
    let err = img_fails(&rig, &["pull", &name]);
    assert!(err.contains("more than 1000 entries"), "{err}");
    assert!(
        err.contains(r#"--max-layer-entries / config "max_layer_entries""#),
        "{err}"
    );
    rig.img_ok(&["pull", "--max-layer-entries=5000", &name]);
}

#[test]
fn build_and_unpack_apply_layers_under_their_own_limit_options() {
    if !crate::can_run() {
        return;
    }
    let flood = hostile::many_entries_gzip(3000);
    // A load unpacks the image into the backend it is given only: each command below, on the
    // other backend, applies the layer itself.
    let loaded_into = |backend: &str| {
        let rig = empty_rig();
        let archive = archive(&rig, "many", &[&flood]);
        rig.img_ok(&[
            "load",
            "--backend",
            backend,
            "-i",
            archive.to_str().unwrap(),
        ]);
        rig
    };
    let rig = loaded_into("overlayfs");
    let out = rig.dir.path().join("unpacked");
    let out = out.to_str().unwrap();
    let err = img_fails(
        &rig,
        &["unpack", "--max-layer-entries=1000", "localhost/many", out],
    );
    assert!(err.contains("--max-layer-entries"), "{err}");
    rig.img_ok(&["unpack", "localhost/many", out]);
    // A COPY needs the base's snapshot, so the build applies the layer.
    let ctx = crate::context("FROM localhost/many\nCOPY f /f\n", &[("f", "x")]);
    let ctx = ctx.path().to_str().unwrap();
    for (backend, other) in [("fuse", "overlayfs"), ("overlayfs", "fuse")] {
        let rig = loaded_into(other);
        let args = ["build", "--no-cache", "--backend", backend, "-t", "out:1"];
        let mut refused = args.to_vec();
        refused.extend(["--max-layer-entries=1000", ctx]);
        let err = img_fails(&rig, &refused);
        assert!(err.contains("--max-layer-entries"), "{backend}: {err}");
        let mut accepted = args.to_vec();
        accepted.push(ctx);
        rig.img_ok(&accepted);
    }
}

#[test]
fn a_layer_that_would_eat_into_the_free_space_reserve_is_refused() {
    if !crate::can_run() {
        return;
    }
    let rig = empty_rig();
    let layer = tests::LayerBuilder::new()
        .file("data", 0o644, tests::layer::noise(1, 1 << 20))
        .finish_gzip();
    let archive = archive(&rig, "small", &[&layer]);
    let archive = archive.to_str().unwrap();
    let err = img_fails(&rig, &["load", "-i", archive, "--min-free-space=1000TiB"]);
    assert!(err.contains("free above the reserve"), "{err}");
    assert!(
        err.contains(r#"--min-free-space / config "min_free_space""#),
        "{err}"
    );
    rig.img_ok(&["load", "-i", archive]);
}

/// Bytes at both ends of the 8 GiB sparse file, the rest holes.
const SPARSE_SIZE: u64 = 8 << 30;

/// A gzip layer with `sparse`, 8 GiB with data only at its ends, as GNU tar's `--sparse`
/// writes it (GNU sparse headers: the holes are not in the stream).
fn sparse_layer(work: &Path) -> Vec<u8> {
    let src = work.join("src");
    fs::create_dir_all(&src).unwrap();
    let f = fs::File::create(src.join("sparse")).unwrap();
    f.set_len(SPARSE_SIZE).unwrap();
    f.write_all_at(b"head", 0).unwrap();
    f.write_all_at(b"tail", SPARSE_SIZE - 4).unwrap();
    let out = work.join("sparse.tar.gz");
    images::run(
        Command::new("tar")
            .args(["--sparse", "--format=gnu", "-czf"])
            .arg(&out)
            .arg("-C")
            .arg(&src)
            .arg("sparse"),
    )
    .unwrap();
    fs::read(out).unwrap()
}

fn assert_sparse(path: &Path) {
    let f = fs::File::open(path).unwrap();
    let meta = f.metadata().unwrap();
    assert_eq!(meta.len(), SPARSE_SIZE, "{}", path.display());
    assert!(
        meta.blocks() * 512 < 1 << 20,
        "{} takes {} blocks",
        path.display(),
        meta.blocks()
    );
    let mut buf = [0u8; 4];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"head");
    f.read_exact_at(&mut buf, SPARSE_SIZE - 4).unwrap();
    assert_eq!(&buf, b"tail");
}

#[test]
fn a_sparse_file_stays_sparse_through_load_unpack_and_local_output() {
    if !crate::can_run() {
        return;
    }
    let rig = empty_rig();
    let layer = sparse_layer(rig.dir.path());
    let archive = archive(&rig, "sparse", &[&layer]);
    // A sparse file counts at its full size against the size limit, holes included.
    let err = img_fails(
        &rig,
        &[
            "load",
            "-i",
            archive.to_str().unwrap(),
            "--max-layer-size=1GiB",
        ],
    );
    assert!(err.contains("file of 8589934592 bytes"), "{err}");
    assert!(err.contains("--max-layer-size"), "{err}");
    rig.img_ok(&["load", "-i", archive.to_str().unwrap()]);
    let unpacked = rig.dir.path().join("unpacked");
    rig.img_ok(&["unpack", "localhost/sparse", unpacked.to_str().unwrap()]);
    assert_sparse(&unpacked.join("sparse"));
    let ctx = crate::context("FROM localhost/sparse\n", &[]);
    for backend in crate::BACKENDS {
        let out = rig.dir.path().join(format!("local-{backend}"));
        rig.img_ok(&[
            "build",
            "--backend",
            backend,
            "-o",
            &format!("type=local,dest={}", out.display()),
            ctx.path().to_str().unwrap(),
        ]);
        assert_sparse(&out.join("sparse"));
    }
    // Each backend's own copy holds holes too: its whole directory takes a few MiB.
    for dir in ["imgfs", "overlayfs"] {
        let used: u64 = walkdir::WalkDir::new(rig.state.join(dir))
            .into_iter()
            .filter_map(|e| e.ok()?.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.blocks() * 512)
            .sum();
        assert!(used < 256 << 20, "{dir} takes {used} bytes");
    }
}

#[test]
fn unpack_makes_fifos_and_devices_as_umoci_does() {
    if !crate::can_run() {
        return;
    }
    let rig = empty_rig();
    let layer = tests::LayerBuilder::new()
        .dir("dev", 0o755)
        .fifo("dev/pipe")
        .mode(0o640)
        .char_dev("dev/null", 1, 3)
        .mode(0o666)
        .block_dev("dev/loop0", 7, 0)
        .mode(0o660)
        .finish_gzip();
    let archive = archive(&rig, "nodes", &[&layer]);
    rig.img_ok(&["load", "-i", archive.to_str().unwrap()]);
    let out = rig.dir.path().join("unpacked");
    let unpack = rig.img(&["unpack", "localhost/nodes", out.to_str().unwrap()]);
    assert!(unpack.status.success(), "{}", text(&unpack));

    let bundle = rig.dir.path().join("umoci");
    images::run(
        Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!(
                "{}:nodes",
                rig.dir.path().join("nodes-layout").display()
            ))
            .arg(&bundle),
    )
    .unwrap();
    let node = |root: &Path, name: &str| {
        fs::symlink_metadata(root.join(name)).map(|m| {
            let ft = m.file_type();
            let kind = if ft.is_fifo() {
                "fifo"
            } else if ft.is_char_device() {
                "char"
            } else if ft.is_block_device() {
                "block"
            } else {
                "other"
            };
            (kind, m.mode() & 0o7777, m.rdev())
        })
    };
    let umoci_root = bundle.join("rootfs");
    assert_eq!(
        node(&out, "dev/pipe").unwrap(),
        node(&umoci_root, "dev/pipe").unwrap()
    );
    for dev in ["dev/null", "dev/loop0"] {
        if crate::test_user().is_some() {
            // An ordinary user cannot make devices: each one left out is named.
            assert!(node(&out, dev).is_err(), "{dev} made");
            assert!(
                text(&unpack).contains(&format!("skipping device {dev}")),
                "{}",
                text(&unpack)
            );
        } else {
            assert_eq!(node(&out, dev).unwrap(), node(&umoci_root, dev).unwrap());
        }
    }
}

/// A base image with devices in it (Debian's debootstrap trees have /dev/console) is a base on
/// both backends: root's snapshots hold the devices; an ordinary user's overlayfs snapshot,
/// where the kernel refuses to make them, leaves them out and names each, as Docker's rootless
/// untar does. The image built keeps the base's layer as it came, devices included.
#[test]
fn a_base_image_with_devices_builds_on_both_backends() {
    if !crate::can_run() {
        return;
    }
    let rig = empty_rig();
    let layer = tests::LayerBuilder::new()
        .dir("dev", 0o755)
        .char_dev("dev/console", 5, 1)
        .mode(0o600)
        .fifo("dev/initctl")
        .mode(0o600)
        .dir("etc", 0o755)
        .file("etc/os-release", 0o644, "ID=test\n")
        .finish_gzip();
    let archive = archive(&rig, "devices", &[&layer]);
    rig.img_ok(&["load", "-i", archive.to_str().unwrap()]);
    let ctx = crate::context("FROM localhost/devices\nCOPY f /f\n", &[("f", "new")]);
    for backend in crate::BACKENDS {
        let tag = format!("on-{backend}");
        let out = rig.img(&[
            "build",
            "--no-cache",
            "--backend",
            backend,
            "-t",
            &tag,
            ctx.path().to_str().unwrap(),
        ]);
        let stderr = text(&out);
        assert!(out.status.success(), "{backend}: {stderr}");
        let skipped = stderr.contains("skipping device dev/console (char 5:1)");
        let unprivileged_overlay = crate::test_user().is_some() && backend == "overlayfs";
        assert_eq!(skipped, unprivileged_overlay, "{backend}: {stderr}");
        let saved = rig.dir.path().join(format!("{tag}.tar"));
        rig.img_ok(&[
            "save",
            "--format",
            "oci-archive",
            "-o",
            saved.to_str().unwrap(),
            &tag,
        ]);
        let image = images::ImageView::of_oci_archive(&saved, "latest").unwrap();
        let console = image
            .tree
            .get("dev/console")
            .expect("the base layer's device");
        assert_eq!(console.kind, tests::manifest::Kind::CharDevice, "{backend}");
        let device = console.device.as_ref().map(|d| (d.major, d.minor));
        assert_eq!(device, Some((5, 1)), "{backend}");
        assert!(image.tree.get("f").is_some());
    }
}

/// A file a RUN step makes sparse through the mount stays sparse in the layer's snapshot and
/// in `-o type=local`, and the layer (its zeros written out in full, as Docker writes them)
/// passes the default ratio where it is loaded again, and unpacks sparse there.
#[test]
fn a_file_made_sparse_by_run_stays_sparse_through_export_and_a_second_store() {
    if !crate::can_run() {
        return;
    }
    let rig = Rig::create();
    let size = 2u64 << 30;
    let ctx = crate::context(
        &format!("FROM busybox\nRUN truncate -s {size} /big && echo -n end >> /big\n"),
        &[],
    );
    let check = |path: &Path| {
        let meta = fs::metadata(path).unwrap();
        assert_eq!(meta.len(), size + 3, "{}", path.display());
        assert!(
            meta.blocks() * 512 < 1 << 20,
            "{} takes {} blocks",
            path.display(),
            meta.blocks()
        );
    };
    for backend in crate::BACKENDS {
        let out = rig.dir.path().join(format!("local-{backend}"));
        rig.img_ok(&[
            "build",
            "--no-cache",
            "--backend",
            backend,
            "-t",
            "big:1",
            "-o",
            &format!("type=local,dest={}", out.display()),
            ctx.path().to_str().unwrap(),
        ]);
        check(&out.join("big"));
    }
    let saved = rig.dir.path().join("big.tar");
    rig.img_ok(&["save", "-o", saved.to_str().unwrap(), "big:1"]);
    let other = empty_rig();
    other.img_ok(&["load", "-i", saved.to_str().unwrap()]);
    let out = other.dir.path().join("unpacked");
    other.img_ok(&["unpack", "big:1", out.to_str().unwrap()]);
    check(&out.join("big"));
}

//! Tests of docker-archive and OCI archive save and load (against skopeo) and `import_rootfs`.

use super::*;

fn skopeo(args: &[&str]) -> String {
    let out = Command::new("skopeo")
        .args(["--insecure-policy", "--tmpdir", "/var/tmp"])
        .args(args)
        .output()
        .expect("skopeo is installed (apt-get install -y skopeo)");
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn save_to(store: &ImageStore, names: &[&str], format: ArchiveFormat, path: &Path) {
    let file = std::fs::File::create(path).unwrap();
    save(store, names, format, io::BufWriter::new(file)).unwrap();
}

fn load_from(store: &ImageStore, path: &Path) -> Vec<Loaded> {
    load(store, std::fs::File::open(path).unwrap()).unwrap()
}

fn archive_members(path: &Path) -> Vec<String> {
    let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
    archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn docker_archive_round_trips_and_skopeo_reads_it() {
    let (dir, store) = state();
    make_image(&store, "busybox", &[&[("a", "1")], &[("b", "2")]]);
    make_image(&store, "localhost:5000/x/y:t", &[&[("a", "1")]]);
    let image = store.resolve("busybox").unwrap();
    let tar = dir.path().join("docker.tar");
    save_to(
        &store,
        &["busybox", "busybox:latest", "localhost:5000/x/y:t"],
        ArchiveFormat::Docker,
        &tar,
    );
    let members = archive_members(&tar);
    let diff = image.config.rootfs.diff_ids[0].digest().to_string();
    assert!(
        members.contains(&format!("{diff}/layer.tar")),
        "{members:?}"
    );
    assert_eq!(
        members.iter().filter(|m| m.starts_with(&diff)).count(),
        1,
        "shared layer once"
    );

    // skopeo reads it: the config is ours byte for byte (same image ID).
    // An archive of several images needs the image named (or `@index`) in skopeo's reference.
    let source = format!("docker-archive:{}:busybox:latest", tar.display());
    let config = skopeo(&["inspect", "--raw", "--config", &source]);
    assert_eq!(sha256_digest(config.as_bytes()), *image.id());
    let config: ImageConfig = serde_json::from_str(&config).unwrap();
    assert_eq!(config.config.on_build, ["RUN echo child"]);
    let oci = dir.path().join("oci");
    skopeo(&["copy", &source, &format!("oci:{}:copied", oci.display())]);

    let (_dir2, other) = state();
    let loaded = load_from(&other, &tar);
    let names: Vec<String> = loaded
        .iter()
        .map(|l| l.name.as_ref().unwrap().familiar())
        .collect();
    assert_eq!(
        names,
        ["busybox:latest", "busybox:latest", "localhost:5000/x/y:t"]
    );
    let again = other.resolve("busybox").unwrap();
    assert_eq!(again.id(), image.id());
    assert_eq!(again.config.rootfs.diff_ids, image.config.rootfs.diff_ids);
    // docker-archive layers are plain tars; they are stored as they came.
    assert_eq!(
        *again.manifest.layers()[0].media_type(),
        MediaType::ImageLayer
    );
    assert_eq!(
        *again.manifest.layers()[0].digest(),
        image.config.rootfs.diff_ids[0]
    );
}

#[test]
fn oci_archive_round_trips_and_skopeo_reads_it() {
    let (dir, store) = state();
    let manifest = make_image(&store, "busybox:1", &[&[("a", "1")]]);
    let image = store.resolve("busybox:1").unwrap();
    let tar = dir.path().join("oci.tar");
    save_to(&store, &["busybox:1"], ArchiveFormat::Oci, &tar);
    let members = archive_members(&tar);
    assert!(members.contains(&"oci-layout".to_string()));
    assert!(members.contains(&format!("blobs/sha256/{}", manifest.digest().digest())));

    let raw = skopeo(&[
        "inspect",
        "--raw",
        &format!("oci-archive:{}:1", tar.display()),
    ]);
    assert_eq!(sha256_digest(raw.as_bytes()), *manifest.digest());
    let config = skopeo(&[
        "inspect",
        "--raw",
        "--config",
        &format!("oci-archive:{}:1", tar.display()),
    ]);
    assert_eq!(sha256_digest(config.as_bytes()), *image.id());

    let (_dir2, other) = state();
    let loaded = load_from(&other, &tar);
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].name.as_ref().unwrap().familiar(), "busybox:1");
    assert_eq!(loaded[0].manifest.digest(), manifest.digest());
    assert_eq!(
        other.resolve("busybox:1").unwrap().manifest_digest,
        *manifest.digest()
    );
}

#[test]
fn archives_skopeo_writes_load() {
    let (dir, store) = state();
    make_image(&store, "app", &[&[("a", "1")], &[("b", "2")]]);
    let image = store.resolve("app").unwrap();
    let ours = dir.path().join("ours.tar");
    save_to(&store, &["app"], ArchiveFormat::Oci, &ours);

    let docker = dir.path().join("skopeo-docker.tar");
    skopeo(&[
        "copy",
        &format!("oci-archive:{}:latest", ours.display()),
        &format!("docker-archive:{}:foo/bar:1", docker.display()),
    ]);
    let oci = dir.path().join("skopeo-oci.tar");
    skopeo(&[
        "copy",
        &format!("oci-archive:{}:latest", ours.display()),
        &format!("oci-archive:{}:docker.io/library/baz:2", oci.display()),
    ]);
    let bare = dir.path().join("skopeo-bare.tar");
    skopeo(&[
        "copy",
        &format!("oci-archive:{}:latest", ours.display()),
        &format!("oci-archive:{}:v3", bare.display()),
    ]);

    let (_dir2, other) = state();
    let loaded = load_from(&other, &docker);
    assert_eq!(
        loaded[0].name.as_ref().unwrap().to_string(),
        "docker.io/foo/bar:1"
    );
    assert_eq!(loaded[0].id, *image.id());
    let loaded = load_from(&other, &oci);
    assert_eq!(loaded[0].name.as_ref().unwrap().familiar(), "baz:2");
    assert_eq!(loaded[0].manifest.digest(), &image.manifest_digest);
    // A bare tag names no repository: the image is kept without a name, found by its ID.
    let loaded = load_from(&other, &bare);
    assert_eq!(loaded[0].name, None);
    assert!(other.has_blob(loaded[0].manifest.digest()).unwrap());
    let (_dir3, third) = state();
    load_from(&third, &bare);
    let unnamed = third.resolve(loaded[0].id.as_ref()).unwrap();
    assert_eq!(unnamed.name, None);
    assert_eq!(third.list().unwrap().len(), 1);
    assert_eq!(
        other
            .resolve("foo/bar:1")
            .unwrap()
            .config
            .rootfs
            .diff_ids
            .len(),
        2
    );
}

/// Writes a docker-archive by hand: manifest.json, a config and one layer file.
fn docker_archive(config: &ImageConfig, layer: &[u8]) -> Vec<u8> {
    let config_json = config.to_json();
    let manifest = r#"[{"Config":"c.json","RepoTags":["hand:made"],"Layers":["l/layer.tar"]}]"#;
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in [
        ("manifest.json", manifest.as_bytes()),
        ("c.json", &config_json[..]),
        ("l/layer.tar", layer),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, path, data).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn docker_archive_layers_must_match_the_config_diff_ids() {
    let tar = layer_tar(&[("a", "1")]);
    let mut config = ImageConfig::for_host();
    config.push_layer(sha256_digest(b"something else"), History::default());
    let (_dir, store) = state();
    let err = load(&store, &docker_archive(&config, &tar)[..]).unwrap_err();
    assert!(matches!(err, ArchiveError::DiffIdMismatch(_)), "{err}");
    assert!(store.list().unwrap().is_empty());

    // A gzipped layer is checked after decompression, and stored as it came.
    let mut config = ImageConfig::for_host();
    config.push_layer(sha256_digest(&tar), History::default());
    let loaded = load(&store, &docker_archive(&config, &gzip(&tar))[..]).unwrap();
    let image = store.resolve("hand:made").unwrap();
    assert_eq!(loaded[0].id, *image.id());
    assert_eq!(
        *image.manifest.layers()[0].media_type(),
        MediaType::ImageLayerGzip
    );
}

#[test]
fn oci_blobs_must_match_their_names() {
    let (dir, store) = state();
    make_image(&store, "app", &[&[("a", "1")]]);
    let path = dir.path().join("oci.tar");
    save_to(&store, &["app"], ArchiveFormat::Oci, &path);
    let image = store.resolve("app").unwrap();
    let layer = image.manifest.layers()[0].digest().digest().to_string();
    // Rewrite the archive with the layer's bytes changed.
    let mut out = tar::Builder::new(Vec::new());
    let mut archive = tar::Archive::new(std::fs::File::open(&path).unwrap());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        if name.ends_with(&layer) {
            data = gzip(&layer_tar(&[("evil", "x")]));
        }
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        out.append_data(&mut h, &name, &data[..]).unwrap();
    }
    let (_dir2, other) = state();
    let err = load(&other, &out.into_inner().unwrap()[..]).unwrap_err();
    assert!(
        matches!(err, ArchiveError::Store(StoreError::DigestMismatch { .. })),
        "{err}"
    );
    assert!(other.list().unwrap().is_empty());
}

#[test]
fn load_refuses_a_tar_that_is_no_image_archive() {
    let (_dir, store) = state();
    let err = load(&store, &layer_tar(&[("a", "1")])[..]).unwrap_err();
    assert!(matches!(err, ArchiveError::NotAnArchive), "{err}");
}

#[test]
fn import_gzips_a_plain_rootfs_and_keeps_its_diff_id() {
    let (_dir, store) = state();
    let rootfs = layer_tar(&[("etc/hostname", "x"), ("bin/sh", "#!")]);
    let name = Reference::parse("imported:1").unwrap();
    let options = ImportOptions {
        config: ContainerConfig {
            cmd: Some(vec!["/bin/sh".into()]),
            ..ContainerConfig::default()
        },
        comment: Some("Imported from -".into()),
    };
    let loaded = import_rootfs(&store, &rootfs[..], &name, options).unwrap();
    let image = store.resolve("imported:1").unwrap();
    assert_eq!(loaded.id, *image.id());
    assert_eq!(image.config.rootfs.diff_ids, [sha256_digest(&rootfs)]);
    assert_eq!(
        image.config.config.cmd.as_deref(),
        Some(&["/bin/sh".to_string()][..])
    );
    assert_eq!(
        (image.config.architecture.clone(), image.config.os.clone()),
        {
            let (a, o, _) = host_platform();
            (a, o)
        }
    );
    assert_eq!(
        image.config.history[0].comment.as_deref(),
        Some("Imported from -")
    );
    assert!(image.config.created_at().is_some());
    let layer = &image.manifest.layers()[0];
    assert_eq!(*layer.media_type(), MediaType::ImageLayerGzip);
    let mut unpacked = Vec::new();
    flate2::read::GzDecoder::new(store.open_blob(layer.digest()).unwrap())
        .read_to_end(&mut unpacked)
        .unwrap();
    assert_eq!(unpacked, rootfs);
}

#[test]
fn import_stores_a_gzip_rootfs_as_it_is() {
    let (_dir, store) = state();
    let rootfs = layer_tar(&[("a", "1")]);
    let gz = gzip(&rootfs);
    let name = Reference::parse("imported").unwrap();
    import_rootfs(&store, &gz[..], &name, ImportOptions::default()).unwrap();
    let image = store.resolve("imported").unwrap();
    assert_eq!(*image.manifest.layers()[0].digest(), sha256_digest(&gz));
    assert_eq!(image.config.rootfs.diff_ids, [sha256_digest(&rootfs)]);
}

#[test]
fn import_refuses_what_is_not_a_tar() {
    let (_dir, store) = state();
    let name = Reference::parse("x").unwrap();
    let text = "not a tar ".repeat(100);
    for input in [text.as_bytes().to_vec(), gzip(text.as_bytes())] {
        let err = import_rootfs(&store, &input[..], &name, ImportOptions::default()).unwrap_err();
        assert!(matches!(err, ArchiveError::NotATar), "{err}");
    }
    assert!(store.list().unwrap().is_empty());
}

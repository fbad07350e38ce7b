//! Tests of archives that lie: names that are no tags, manifests that read two ways, documents
//! over the size cap, and descriptors whose size is not their blob's.

use super::*;

use serde_json::{Value, json};

/// A tar of `members` (path, bytes).
fn tar_of(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in members {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// A docker-archive of one image with one layer whose manifest.json lists `repo_tags`.
fn docker_archive_tagged(repo_tags: Value, config: &mut ImageConfig) -> Vec<u8> {
    let layer = layer_tar(&[("a", "1")]);
    config.push_layer(sha256_digest(&layer), History::default());
    let manifest = json!([{"Config": "c.json", "RepoTags": repo_tags, "Layers": ["l/layer.tar"]}]);
    tar_of(&[
        ("manifest.json", manifest.to_string().as_bytes()),
        ("c.json", &config.to_json()),
        ("l/layer.tar", &layer),
    ])
}

/// A valid one-layer OCI manifest (as JSON, for the test to change) and its blobs.
fn oci_parts(config: &mut ImageConfig) -> (Value, Vec<Vec<u8>>) {
    let layer = gzip(&layer_tar(&[("a", "1")]));
    config.push_layer(sha256_digest(&layer_tar(&[("a", "1")])), History::default());
    let config_json = config.to_json();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256_digest(&config_json).to_string(),
            "size": config_json.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": sha256_digest(&layer).to_string(),
            "size": layer.len(),
        }],
    });
    (manifest, vec![config_json, layer])
}

/// An OCI archive holding `blobs` and `manifest`, whose index entry names it `oci:1` with
/// `entry_size` (the manifest's own size when `None`).
fn oci_archive(manifest: &Value, blobs: &[Vec<u8>], entry_size: Option<u64>) -> Vec<u8> {
    let manifest = serde_json::to_vec(manifest).unwrap();
    let digest = sha256_digest(&manifest);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest.to_string(),
            "size": entry_size.unwrap_or(manifest.len() as u64),
            "annotations": {"io.containerd.image.name": "docker.io/library/oci:1"},
        }],
    });
    let mut members: Vec<(String, Vec<u8>)> = vec![
        (
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".into(), index.to_string().into_bytes()),
        (format!("blobs/sha256/{}", digest.digest()), manifest),
    ];
    for blob in blobs {
        let path = format!("blobs/sha256/{}", sha256_digest(blob).digest());
        members.push((path, blob.clone()));
    }
    let refs: Vec<(&str, &[u8])> = members
        .iter()
        .map(|(p, d)| (p.as_str(), d.as_slice()))
        .collect();
    tar_of(&refs)
}

/// A label value that makes a config or manifest over 4 MiB.
fn five_mib() -> String {
    "x".repeat(5 << 20)
}

#[test]
fn a_repo_tag_without_a_tag_is_refused_and_named() {
    let (_dir, store) = state();
    let archive = docker_archive_tagged(json!(["latest"]), &mut ImageConfig::for_host());
    let err = load(&store, &archive[..]).unwrap_err();
    assert!(matches!(err, ArchiveError::InvalidTag { .. }), "{err}");
    assert!(err.to_string().contains("\"latest\""), "{err}");
    assert!(store.list().unwrap().is_empty());

    // The same archive with a name and a tag loads, and the image resolves by its ID.
    let archive = docker_archive_tagged(json!(["latest:1"]), &mut ImageConfig::for_host());
    let loaded = load(&store, &archive[..]).unwrap();
    let image = store.resolve(loaded[0].id.digest()).unwrap();
    assert_eq!(
        image.name.as_ref().unwrap().to_string(),
        "docker.io/library/latest:1"
    );
}

#[test]
fn a_docker_archive_config_over_4_mib_is_refused() {
    let (_dir, store) = state();
    let mut config = ImageConfig::for_host();
    config.config.labels.insert("big".into(), five_mib());
    let err = load(
        &store,
        &docker_archive_tagged(json!(["big:1"]), &mut config)[..],
    )
    .unwrap_err();
    assert!(matches!(err, ArchiveError::TooLarge { .. }), "{err}");
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn a_well_formed_oci_archive_loads() {
    let (_dir, store) = state();
    let (manifest, blobs) = oci_parts(&mut ImageConfig::for_host());
    load(&store, &oci_archive(&manifest, &blobs, None)[..]).unwrap();
    store.resolve("oci:1").unwrap();
}

#[test]
fn an_ambiguous_manifest_is_refused_on_load() {
    let (_dir, store) = state();
    let (mut manifest, blobs) = oci_parts(&mut ImageConfig::for_host());
    manifest["manifests"] = json!([]);
    let err = load(&store, &oci_archive(&manifest, &blobs, None)[..]).unwrap_err();
    assert!(matches!(err, ArchiveError::BadManifest { .. }), "{err}");
    assert!(err.to_string().contains("CVE-2021-41190"), "{err}");
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn a_manifest_over_4_mib_is_refused_on_load() {
    let (_dir, store) = state();
    let (mut manifest, blobs) = oci_parts(&mut ImageConfig::for_host());
    manifest["annotations"] = json!({ "big": five_mib() });
    let err = load(&store, &oci_archive(&manifest, &blobs, None)[..]).unwrap_err();
    assert!(matches!(err, ArchiveError::TooLarge { .. }), "{err}");
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn an_oci_config_over_4_mib_is_refused_on_load() {
    let (_dir, store) = state();
    let mut config = ImageConfig::for_host();
    config.config.labels.insert("big".into(), five_mib());
    let (manifest, blobs) = oci_parts(&mut config);
    let err = load(&store, &oci_archive(&manifest, &blobs, None)[..]).unwrap_err();
    assert!(matches!(err, ArchiveError::TooLarge { .. }), "{err}");
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn a_descriptor_whose_size_lies_is_refused_on_load() {
    let (_dir, store) = state();
    let (manifest, blobs) = oci_parts(&mut ImageConfig::for_host());
    for field in ["/layers/0/size", "/config/size"] {
        let mut lying = manifest.clone();
        let size = lying.pointer(field).unwrap().as_u64().unwrap();
        *lying.pointer_mut(field).unwrap() = json!(size + 1);
        let err = load(&store, &oci_archive(&lying, &blobs, None)[..]).unwrap_err();
        assert!(
            matches!(err, ArchiveError::SizeMismatch { .. }),
            "{field}: {err}"
        );
    }
    // The index entry's size of the manifest itself.
    let size = serde_json::to_vec(&manifest).unwrap().len() as u64;
    let err = load(&store, &oci_archive(&manifest, &blobs, Some(size - 1))[..]).unwrap_err();
    assert!(matches!(err, ArchiveError::SizeMismatch { .. }), "{err}");
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn ambiguity_is_judged_on_the_document_and_its_declared_type() {
    let ok = json!({"schemaVersion": 2, "layers": [], "config": {}});
    assert_eq!(check_unambiguous(ok.to_string().as_bytes()), Ok(()));
    let index = json!({"schemaVersion": 2, "manifests": []});
    assert_eq!(check_unambiguous(index.to_string().as_bytes()), Ok(()));
    for bad in [
        json!({"manifests": [], "layers": []}),
        json!({"manifests": [], "config": {}}),
        json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "manifests": []}),
        json!({"mediaType": docker_media_type::MANIFEST_LIST, "layers": []}),
    ] {
        assert!(
            check_unambiguous(bad.to_string().as_bytes()).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn an_archive_index_over_4_mib_is_refused_by_name() {
    let (_dir, store) = state();
    let padding = five_mib();
    let manifest = json!([{"Config": "c.json", "RepoTags": ["a:1"], "Layers": [], "Pad": padding}]);
    let archive = tar_of(&[("manifest.json", manifest.to_string().as_bytes())]);
    let err = load(&store, &archive[..]).unwrap_err();
    assert!(matches!(err, ArchiveError::TooLarge { .. }), "{err}");
    assert!(err.to_string().starts_with("manifest.json is "), "{err}");
}

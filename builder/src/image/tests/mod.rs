//! Tests of the image store, references, configs, the state lock and archives (with skopeo).

mod archive;
mod config;
mod distribute;
mod hostile;
mod lock;
mod reference;
mod store;

use std::io::{self, Read, Write};
use std::path::Path;
use std::process::Command;
use std::str::FromStr;
use std::sync::mpsc;
use std::time::Duration;

use flate2::write::GzEncoder;
use oci_spec::image::{Descriptor, Digest, ImageManifest, MediaType};
use tempfile::TempDir;

use super::*;

fn digest(s: &str) -> Digest {
    s.parse().unwrap()
}

fn state() -> (TempDir, ImageStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    (dir, store)
}

/// An uncompressed layer tar holding `files` (path, contents).
fn layer_tar(files: &[(&str, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, contents) in files {
        let mut header = tar::Header::new_ustar();
        header.set_size(contents.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        builder
            .append_data(&mut header, path, contents.as_bytes())
            .unwrap();
    }
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Stores an image with one gzip layer per entry of `layers` and tags it `name`.
fn make_image(store: &ImageStore, name: &str, layers: &[&[(&str, &str)]]) -> Descriptor {
    let mut config = ImageConfig::for_host();
    config.created = Some("2024-01-02T03:04:05Z".to_string());
    config.config.cmd = Some(vec!["/bin/sh".into(), "-c".into(), "echo hi".into()]);
    config.config.healthcheck = Some(HealthConfig {
        test: vec!["CMD-SHELL".into(), "true".into()],
        interval: 30_000_000_000,
        ..HealthConfig::default()
    });
    config.config.on_build = vec!["RUN echo child".into()];
    let mut descriptors = Vec::new();
    for files in layers {
        let tar = layer_tar(files);
        let blob = store.put_blob(&gzip(&tar)[..], None).unwrap();
        descriptors.push(blob.descriptor(MediaType::ImageLayerGzip));
        config.push_layer(
            sha256_digest(&tar),
            History {
                created_by: Some(format!("COPY {} /", files[0].0)),
                ..History::default()
            },
        );
    }
    config.push_empty_layer(History {
        created_by: Some("CMD [\"/bin/sh\"]".into()),
        ..History::default()
    });
    let manifest = store.put_image(&config, descriptors).unwrap();
    store
        .tag(&Reference::parse(name).unwrap(), &manifest)
        .unwrap();
    manifest
}

fn blob_names(store: &ImageStore) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(store.state_dir().join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn platforms_parse_and_print_as_docker_spells_them() {
    let p = Platform::from_str("linux/arm64/v8").unwrap();
    assert_eq!(p.variant.as_deref(), Some("v8"));
    assert_eq!(p.to_string(), "linux/arm64/v8");
    assert_eq!(
        Platform::from_str("linux/amd64").unwrap().to_string(),
        "linux/amd64"
    );
    for bad in ["linux", "linux/", "/amd64", "a/b/c/d", ""] {
        assert!(Platform::from_str(bad).is_err(), "{bad:?}");
    }
}

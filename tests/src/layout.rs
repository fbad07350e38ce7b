//! OCI image layouts written by hand around layer blobs given as bytes: for layers no tool would
//! make (bombs, floods, sparse files), which umoci and skopeo would re-pack or refuse.

use std::fs;
use std::io::{self, Read};
use std::path::Path;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Writes the OCI layout `layout` (created, or added to) with the image `tag`: one linux/amd64
/// config with Docker's default PATH and the gzip `layers` in order. The image is named
/// `localhost/<tag>` by the containerd name annotation, and `tag` by `ref.name`.
pub fn oci_image_from_layers(layout: &Path, tag: &str, layers: &[&[u8]]) -> io::Result<()> {
    fs::create_dir_all(layout.join("blobs/sha256"))?;
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for layer in layers {
        let digest = put_blob(layout, layer)?;
        let mut hasher = Sha256::new();
        let mut gz = flate2::read::MultiGzDecoder::new(*layer);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = gz.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        diff_ids.push(format!("sha256:{}", hex::encode(hasher.finalize())));
        descriptors.push(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest,
            "size": layer.len(),
        }));
    }
    let (arch, os) = (std::env::consts::ARCH, "linux");
    let arch = match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = json!({
        "architecture": arch,
        "os": os,
        "config": {"Env": [crate::images::DEFAULT_PATH], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = serde_json::to_vec(&config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": put_blob(layout, &config)?,
            "size": config.len(),
        },
        "layers": descriptors,
    });
    let manifest = serde_json::to_vec(&manifest)?;
    let index_path = layout.join("index.json");
    let mut index: Value = match fs::read(&index_path) {
        Ok(b) => serde_json::from_slice(&b)?,
        Err(_) => json!({"schemaVersion": 2, "manifests": []}),
    };
    index["manifests"]
        .as_array_mut()
        .expect("manifests")
        .push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": put_blob(layout, &manifest)?,
            "size": manifest.len(),
            "annotations": {
                "io.containerd.image.name": format!("localhost/{tag}"),
                "org.opencontainers.image.ref.name": tag,
            },
        }));
    fs::write(index_path, serde_json::to_vec(&index)?)
}

/// Stores `bytes` as a blob of the layout; returns its digest.
fn put_blob(layout: &Path, bytes: &[u8]) -> io::Result<String> {
    let hex = hex::encode(Sha256::digest(bytes));
    fs::write(layout.join("blobs/sha256").join(&hex), bytes)?;
    Ok(format!("sha256:{hex}"))
}

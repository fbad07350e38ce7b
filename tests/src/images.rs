//! Container images for build tests: base images made from fixture root file systems, buildah
//! with its own storage to build the reference images, and a comparable view (file tree and
//! config) of any image in an OCI layout.
//!
//! Everything goes through the tools users have (umoci, skopeo, buildah), so a test compares
//! img's output with what the peers read and write, not with img's own idea of an image.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::manifest::Manifest;

/// The PATH Docker puts in images that set none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs `cmd` and fails with its output when it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Makes the OCI image `layout:tag` with `rootfs_tar` as its only layer and Docker's default
/// PATH and `CMD ["sh"]`, the way busybox's official image looks. `prepare` may change the
/// unpacked root file system before it is packed.
pub fn oci_image_from_rootfs(
    rootfs_tar: &Path,
    layout: &Path,
    tag: &str,
    prepare: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let bundle = work.path().join("bundle");
    let image = format!("{}:{tag}", layout.display());
    if !layout.join("index.json").exists() {
        run(Command::new("umoci").args(["init", "--layout"]).arg(layout))?;
    }
    run(Command::new("umoci").args(["new", "--image", &image]))?;
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle))?;
    run(Command::new("tar")
        .arg("-xf")
        .arg(rootfs_tar)
        .arg("-C")
        .arg(bundle.join("rootfs")))?;
    prepare(&bundle.join("rootfs"))?;
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle))?;
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.cmd",
        "sh",
        "--config.env",
        DEFAULT_PATH,
    ]))?;
    Ok(())
}

/// Packs an OCI layout directory into an OCI archive (a tar of the layout).
pub fn oci_archive(layout: &Path, archive: &Path) -> anyhow::Result<()> {
    run(Command::new("tar")
        .arg("-cf")
        .arg(archive)
        .arg("-C")
        .arg(layout)
        .arg("."))?;
    Ok(())
}

/// buildah with storage of its own, so tests never see each other's images (or the host's).
pub struct Buildah {
    root: PathBuf,
    runroot: PathBuf,
    driver: String,
}

impl Buildah {
    /// Storage under `dir` with the storage driver `driver` (`vfs` or `overlay`).
    pub fn new(dir: &Path, driver: &str) -> Buildah {
        Buildah {
            root: dir.join("root"),
            runroot: dir.join("runroot"),
            driver: driver.to_owned(),
        }
    }

    /// `buildah` with the storage options.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("buildah");
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.runroot)
            .arg("--storage-driver")
            .arg(&self.driver);
        cmd
    }

    /// The containers-storage transport reference for `name` in this storage.
    pub fn storage_ref(&self, name: &str) -> String {
        format!(
            "containers-storage:[{}@{}+{}]{name}",
            self.driver,
            self.root.display(),
            self.runroot.display()
        )
    }

    /// Copies `layout:tag` into the storage as `name` (e.g. `localhost/busybox:latest`).
    pub fn load(&self, layout: &Path, tag: &str, name: &str) -> anyhow::Result<()> {
        run(Command::new("skopeo")
            .args(["copy", "-q"])
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(self.storage_ref(name)))?;
        Ok(())
    }

    /// `buildah bud -t tag [args] context` in Docker's image format (the OCI format has no
    /// HEALTHCHECK, SHELL or ONBUILD), with runc, never pulling.
    pub fn bud(&self, context: &Path, tag: &str, args: &[&str]) -> anyhow::Result<Output> {
        run(self
            .command()
            .args(["bud", "--layers", "--isolation", "oci", "--pull=never"])
            .args(["--format", "docker", "-t", tag])
            .args(args)
            .arg(context))
    }

    /// The image's Docker-format config object (`buildah inspect`), which keeps the fields an
    /// OCI layout export drops.
    pub fn docker_config(&self, name: &str) -> anyhow::Result<Value> {
        let out = run(self.command().args(["inspect", "--type", "image", name]))?;
        let v: Value = serde_json::from_slice(&out.stdout)?;
        Ok(v["Docker"]["config"].clone())
    }

    /// Copies the image `name` out of the storage into `layout:tag`.
    pub fn export(&self, name: &str, layout: &Path, tag: &str) -> anyhow::Result<()> {
        run(Command::new("skopeo")
            .args(["copy", "-q"])
            .arg(self.storage_ref(name))
            .arg(format!("oci:{}:{tag}", layout.display())))?;
        Ok(())
    }
}

/// What an image is, as far as build comparisons go: its flattened file tree and its config.
pub struct ImageView {
    pub tree: Manifest,
    /// The `config` object of the image configuration (Env, Cmd, ...).
    pub config: Value,
    /// The whole image configuration.
    pub image_config: Value,
}

impl ImageView {
    /// Unpacks `layout:tag` with umoci (as root, so owners survive) and reads it.
    pub fn of_layout(layout: &Path, tag: &str) -> anyhow::Result<ImageView> {
        let work = tempfile::tempdir()?;
        let bundle = work.path().join("bundle");
        run(Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:{tag}", layout.display()))
            .arg(&bundle))?;
        let tree = Manifest::of_dir(&bundle.join("rootfs"))?.without_mtime();
        let image_config = image_config(layout, tag)?;
        let config = image_config
            .get("config")
            .cloned()
            .unwrap_or(Value::Object(Default::default()));
        Ok(ImageView {
            tree,
            config,
            image_config,
        })
    }

    /// Reads an OCI archive (a tar of a layout) through a temporary layout.
    pub fn of_oci_archive(archive: &Path, tag: &str) -> anyhow::Result<ImageView> {
        let work = tempfile::tempdir()?;
        let layout = work.path().join("layout");
        fs::create_dir(&layout)?;
        run(Command::new("tar")
            .arg("-xf")
            .arg(archive)
            .arg("-C")
            .arg(&layout))?;
        ImageView::of_layout(&layout, tag)
    }
}

/// The image configuration of `layout:tag`, found through index.json and the manifest.
pub fn image_config(layout: &Path, tag: &str) -> anyhow::Result<Value> {
    let blob = |digest: &str| -> anyhow::Result<Value> {
        let hex = digest
            .strip_prefix("sha256:")
            .with_context(|| format!("unexpected digest {digest}"))?;
        let path = layout.join("blobs/sha256").join(hex);
        let bytes = fs::read(&path).with_context(|| format!("failed to read {path:?}"))?;
        Ok(serde_json::from_slice(&bytes)?)
    };
    let index: Value = serde_json::from_slice(&fs::read(layout.join("index.json"))?)?;
    let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
    let desc = manifests
        .iter()
        .find(|m| {
            m["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(tag)
                || manifests.len() == 1
        })
        .with_context(|| format!("no manifest tagged {tag} in {layout:?}"))?;
    let manifest = blob(desc["digest"].as_str().unwrap_or_default())?;
    blob(manifest["config"]["digest"].as_str().unwrap_or_default())
}

/// One platform's image in `multi_platform_index`: `os/arch[/variant]`, and an uncompressed
/// layer tar to put on top of the base image's layers, if any.
pub struct PlatformImage<'a> {
    pub platform: &'a str,
    pub extra_layer: Option<Vec<u8>>,
}

/// Adds to `layout` an OCI image index tagged `tag` with one image manifest per entry of
/// `platforms`: `base_tag`'s layers (plus the entry's extra layer) and its config with the
/// platform's os, architecture and variant. Returns the index's digest and the manifests'
/// digests in order. `skopeo copy --all oci:LAYOUT:TAG docker://...` pushes the lot.
pub fn multi_platform_index(
    layout: &Path,
    base_tag: &str,
    tag: &str,
    platforms: &[PlatformImage],
) -> anyhow::Result<(String, Vec<String>)> {
    use sha2::Digest as _;
    let blobs = layout.join("blobs/sha256");
    let put = |bytes: &[u8]| -> anyhow::Result<(String, usize)> {
        let hex = hex::encode(sha2::Sha256::digest(bytes));
        fs::write(blobs.join(&hex), bytes)?;
        Ok((format!("sha256:{hex}"), bytes.len()))
    };
    let read = |digest: &str| -> anyhow::Result<Value> {
        let hex = digest
            .strip_prefix("sha256:")
            .context("not a sha256 digest")?;
        Ok(serde_json::from_slice(&fs::read(blobs.join(hex))?)?)
    };
    let index_path = layout.join("index.json");
    let mut index: Value = serde_json::from_slice(&fs::read(&index_path)?)?;
    let base = index["manifests"]
        .as_array()
        .and_then(|m| {
            m.iter().find(|d| {
                d["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(base_tag)
            })
        })
        .with_context(|| format!("no image tagged {base_tag} in {layout:?}"))?
        .clone();
    let base_manifest = read(base["digest"].as_str().unwrap_or_default())?;
    let base_config = read(
        base_manifest["config"]["digest"]
            .as_str()
            .unwrap_or_default(),
    )?;

    let mut entries = Vec::new();
    let mut digests = Vec::new();
    for image in platforms {
        let parts: Vec<&str> = image.platform.split('/').collect();
        let (os, arch, variant) = match parts.as_slice() {
            [os, arch] => (*os, *arch, None),
            [os, arch, v] => (*os, *arch, Some(*v)),
            _ => bail!("bad platform {}", image.platform),
        };
        let mut manifest = base_manifest.clone();
        let mut config = base_config.clone();
        config["os"] = os.into();
        config["architecture"] = arch.into();
        match variant {
            Some(v) => config["variant"] = v.into(),
            None => {
                if let Some(c) = config.as_object_mut() {
                    c.remove("variant");
                }
            }
        }
        if let Some(tar) = &image.extra_layer {
            let diff_id = format!("sha256:{}", hex::encode(sha2::Sha256::digest(tar)));
            let (digest, size) = put(&crate::layer::gzip(tar))?;
            config["rootfs"]["diff_ids"]
                .as_array_mut()
                .context("config without diff_ids")?
                .push(diff_id.into());
            if let Some(history) = config["history"].as_array_mut() {
                history.push(serde_json::json!({ "created_by": "COPY marker /" }));
            }
            manifest["layers"]
                .as_array_mut()
                .context("manifest without layers")?
                .push(serde_json::json!({
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": digest,
                    "size": size,
                }));
        }
        let (config_digest, config_size) = put(&serde_json::to_vec(&config)?)?;
        manifest["config"]["digest"] = config_digest.into();
        manifest["config"]["size"] = config_size.into();
        let (digest, size) = put(&serde_json::to_vec(&manifest)?)?;
        let mut platform = serde_json::json!({ "os": os, "architecture": arch });
        if let Some(v) = variant {
            platform["variant"] = v.into();
        }
        entries.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": size,
            "platform": platform,
        }));
        digests.push(digest);
    }
    let image_index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    });
    let (digest, size) = put(&serde_json::to_vec(&image_index)?)?;
    index["manifests"]
        .as_array_mut()
        .context("index.json without manifests")?
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": digest,
            "size": size,
            "annotations": { "org.opencontainers.image.ref.name": tag },
        }));
    fs::write(&index_path, serde_json::to_vec(&index)?)?;
    Ok((digest, digests))
}

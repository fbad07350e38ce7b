//! Image archives: `img save` (docker-archive or OCI archive), `img load` (either, detected), and
//! `img import` (a root file system tar as a one-layer image).
//!
//! Archives are untrusted input: every blob is verified against its digest (OCI archives name
//! blobs by digest; docker-archive layers are checked against the config's diff IDs), and paths
//! inside the archive are only map keys, never joined onto a host path.

use std::collections::{HashMap, HashSet};
use std::io::{self, BufRead, BufReader, Read, Seek, Write};
use std::path::{Component, Path};

use chrono::Utc;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use oci_spec::image::{
    ANNOTATION_REF_NAME, Descriptor, Digest, ImageIndex, ImageIndexBuilder, MediaType,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::config::{ContainerConfig, History, ImageConfig, canonical_json};
use super::platform::host_platform;
use super::reference::{Reference, ReferenceError};
use super::store::{Blob, ImageStore, StoreError, descriptor_is_index};
use super::{
    Compression, MAX_MANIFEST_SIZE, check_unambiguous, digest_from_hasher, image_manifest,
    is_manifest,
};

/// The annotation containerd, BuildKit and Docker 25+ put the full image name in; the OCI
/// `ref.name` annotation then holds only the tag, which is what skopeo's `oci-archive:f.tar:tag`
/// looks up.
const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// Archive members up to this size are kept in memory until the archive's manifest says what
/// they are; larger ones (layers) go straight into the blob store.
const SMALL_FILE: u64 = 4 << 20;
// `load` reads an index.json or manifest.json among the stored members as over the cap.
const _: () = assert!(SMALL_FILE >= MAX_MANIFEST_SIZE);

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("failed to read the archive: {0}")]
    Read(#[source] io::Error),
    #[error("failed to write the archive: {0}")]
    Write(#[source] io::Error),
    #[error("not an image archive: it has neither manifest.json nor index.json")]
    NotAnArchive,
    #[error("the archive refers to {0}, which it does not contain")]
    Missing(String),
    #[error("invalid {path} in the archive: {source}")]
    BadJson {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "layer {} of {}: its uncompressed content hashes to {}, the config says {}",
        .0.layer, .0.image, .0.actual, .0.expected
    )]
    DiffIdMismatch(Box<DiffIdMismatch>),
    #[error("image {image} has {layers} layers but its config lists {diff_ids} diff IDs")]
    LayerCount {
        image: String,
        layers: usize,
        diff_ids: usize,
    },
    #[error("layer {layer} has media type {media_type}, which is not a layer")]
    NotALayer { layer: Digest, media_type: String },
    #[error("the input is not a tar archive (plain or gzip-compressed)")]
    NotATar,
    #[error("no manifest in index {0} is stored in the archive")]
    NoPlatform(Digest),
    /// A `RepoTags` entry that is not `NAME:TAG`; Docker refuses the same with `invalid tag`.
    #[error("invalid tag {tag:?} in manifest.json: {reason}")]
    InvalidTag { tag: String, reason: String },
    #[error("{what} is {size} bytes, over the {} MiB limit", MAX_MANIFEST_SIZE >> 20)]
    TooLarge { what: String, size: u64 },
    #[error("blob {digest}: its descriptor says {expected} bytes, the archive holds {actual}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("manifest {digest}: {message}")]
    BadManifest { digest: Digest, message: String },
    #[error("{path} in the archive: {message}")]
    Document { path: String, message: String },
}

/// A layer whose content is not what the image's config says (boxed: errors stay small).
#[derive(Debug)]
pub struct DiffIdMismatch {
    pub image: String,
    pub layer: String,
    pub expected: Digest,
    pub actual: Digest,
}

/// The two archive formats `img save` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// `docker save`'s format: manifest.json (Config, RepoTags, Layers), `<config hex>.json`,
    /// uncompressed layers as `<diff ID hex>/layer.tar`.
    Docker,
    /// An OCI image layout in a tar: oci-layout, index.json, blobs/sha256/<hex>.
    Oci,
}

/// One image `load` or `import_rootfs` stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    /// The name it was tagged with; `None` for an image the archive gives no name, which the
    /// store keeps without one (`ImageStore::keep_untagged`).
    pub name: Option<Reference>,
    pub manifest: Descriptor,
    /// The image ID (config digest).
    pub id: Digest,
}

/// docker-archive's manifest.json entries.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default, deserialize_with = "null_default")]
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

fn null_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

struct TarOut<W: Write> {
    builder: tar::Builder<W>,
    written: HashSet<String>,
}

impl<W: Write> TarOut<W> {
    /// Appends a regular file once; later calls with the same path are skipped (shared layers).
    fn file(&mut self, path: &str, size: u64, data: impl Read) -> Result<(), ArchiveError> {
        if !self.written.insert(path.to_string()) {
            return Ok(());
        }
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(size);
        header.set_mode(0o644);
        header.set_mtime(0);
        self.builder
            .append_data(&mut header, path, data)
            .map_err(ArchiveError::Write)
    }

    fn bytes(&mut self, path: &str, bytes: &[u8]) -> Result<(), ArchiveError> {
        self.file(path, bytes.len() as u64, bytes)
    }
}

/// Writes the images `names` (any form `ImageStore::resolve` takes) to `writer` as one archive.
/// Names that resolve to the same image share its entry.
pub fn save(
    store: &ImageStore,
    names: &[&str],
    format: ArchiveFormat,
    writer: impl Write,
) -> Result<(), ArchiveError> {
    let mut images = Vec::new();
    for name in names {
        images.push(store.resolve(name)?);
    }
    let mut out = TarOut {
        builder: tar::Builder::new(writer),
        written: HashSet::new(),
    };
    match format {
        ArchiveFormat::Docker => save_docker(store, &images, &mut out)?,
        ArchiveFormat::Oci => save_oci(store, &images, &mut out)?,
    }
    out.builder
        .into_inner()
        .and_then(|mut w| w.flush())
        .map_err(ArchiveError::Write)
}

fn save_docker<W: Write>(
    store: &ImageStore,
    images: &[super::Image],
    out: &mut TarOut<W>,
) -> Result<(), ArchiveError> {
    let mut entries: Vec<(Digest, DockerManifestEntry)> = Vec::new();
    for image in images {
        let repo_tag = image
            .name
            .as_ref()
            .filter(|n| n.tag().is_some())
            .map(Reference::familiar);
        if let Some((_, entry)) = entries
            .iter_mut()
            .find(|(d, _)| *d == image.manifest_digest)
        {
            entry.repo_tags.extend(repo_tag);
            continue;
        }
        let config_digest = image.manifest.config().digest();
        let config_path = format!("{}.json", config_digest.digest());
        out.bytes(&config_path, &store.read_blob(config_digest)?)?;
        let diff_ids = &image.config.rootfs.diff_ids;
        if diff_ids.len() != image.manifest.layers().len() {
            return Err(ArchiveError::LayerCount {
                image: image.display_name(),
                layers: image.manifest.layers().len(),
                diff_ids: diff_ids.len(),
            });
        }
        let mut layers = Vec::new();
        for (layer, diff_id) in image.manifest.layers().iter().zip(diff_ids) {
            let path = format!("{}/layer.tar", diff_id.digest());
            if !out.written.contains(&path) {
                // docker-archive layers are uncompressed and named by diff ID, which docker load
                // and skopeo check; decompress into a temporary file to learn the size the tar
                // header needs first.
                let mut tmp = tempfile::tempfile_in(store.state_dir()).map_err(|e| {
                    ArchiveError::Store(io_store("create temporary file in", store.state_dir(), e))
                })?;
                let actual = uncompressed_digest(store, layer, &mut tmp)?;
                if actual != *diff_id {
                    return Err(ArchiveError::DiffIdMismatch(Box::new(DiffIdMismatch {
                        image: image.display_name(),
                        layer: layer.digest().to_string(),
                        expected: diff_id.clone(),
                        actual,
                    })));
                }
                let size = tmp.stream_position().map_err(ArchiveError::Write)?;
                tmp.rewind().map_err(ArchiveError::Write)?;
                out.file(&path, size, &mut tmp)?;
            }
            layers.push(path);
        }
        entries.push((
            image.manifest_digest.clone(),
            DockerManifestEntry {
                config: config_path,
                repo_tags: repo_tag.into_iter().collect(),
                layers,
            },
        ));
    }
    let manifest: Vec<DockerManifestEntry> = entries.into_iter().map(|(_, e)| e).collect();
    let bytes = serde_json::to_vec(&manifest).expect("manifest.json serializes");
    out.bytes("manifest.json", &bytes)
}

fn io_store(op: &'static str, path: &Path, source: io::Error) -> StoreError {
    StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Decompresses a layer blob into `sink` and returns the digest of what it wrote: the diff ID.
fn uncompressed_digest(
    store: &ImageStore,
    layer: &Descriptor,
    sink: &mut impl Write,
) -> Result<Digest, ArchiveError> {
    let compression =
        Compression::of_layer(layer.media_type()).ok_or_else(|| ArchiveError::NotALayer {
            layer: layer.digest().clone(),
            media_type: layer.media_type().to_string(),
        })?;
    let blob = BufReader::new(store.open_blob(layer.digest())?);
    let mut reader: Box<dyn Read> = match compression {
        Compression::None => Box::new(blob),
        Compression::Gzip => Box::new(GzDecoder::new(blob)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(blob).map_err(ArchiveError::Read)?)
        }
    };
    hash_copy(&mut reader, sink).map_err(ArchiveError::Read)
}

/// Copies `reader` to `sink` and returns the sha256 of the bytes.
fn hash_copy(reader: &mut impl Read, sink: &mut impl Write) -> io::Result<Digest> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        sink.write_all(&buf[..n])?;
    }
    Ok(digest_from_hasher(hasher))
}

fn save_oci<W: Write>(
    store: &ImageStore,
    images: &[super::Image],
    out: &mut TarOut<W>,
) -> Result<(), ArchiveError> {
    out.bytes("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let mut manifests = Vec::new();
    for image in images {
        let blobs = std::iter::once(&image.manifest_descriptor)
            .chain(std::iter::once(image.manifest.config()))
            .chain(image.manifest.layers());
        for blob in blobs {
            let path = format!("blobs/sha256/{}", blob.digest().digest());
            if !out.written.contains(&path) {
                let file = store.open_blob(blob.digest())?;
                let blob_path = store.blob_path(blob.digest())?;
                let size = file
                    .metadata()
                    .map_err(|e| io_store("stat", &blob_path, e))?
                    .len();
                out.file(&path, size, file)?;
            }
        }
        let mut descriptor = image.manifest_descriptor.clone();
        let mut annotations = HashMap::new();
        if let Some(name) = &image.name
            && let Some(tag) = name.tag()
        {
            annotations.insert(ANNOTATION_REF_NAME.to_string(), tag.to_string());
            annotations.insert(ANNOTATION_CONTAINERD_NAME.to_string(), name.to_string());
        }
        if !annotations.is_empty() {
            descriptor.set_annotations(Some(annotations));
        }
        manifests.push(descriptor);
    }
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .build()
        .expect("every required index field is set");
    out.bytes("index.json", &canonical_json(&index))
}

/// What `load` has read of an archive: small members in memory, large ones already stored.
#[derive(Default)]
struct Members {
    small: HashMap<String, Vec<u8>>,
    stored: HashMap<String, Blob>,
    links: HashMap<String, String>,
}

/// Normalizes a member path: no leading `./` or `/`, `..` resolved lexically within the archive.
fn normalize(path: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    parts.join("/")
}

/// `blobs/sha256/<hex>` -> the digest it names.
fn oci_blob_digest(path: &str) -> Option<Digest> {
    let rest = path.strip_prefix("blobs/")?;
    let (alg, hex) = rest.split_once('/')?;
    format!("{alg}:{hex}").parse().ok()
}

impl Members {
    fn read(store: &ImageStore, reader: impl Read) -> Result<Members, ArchiveError> {
        let mut members = Members::default();
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries().map_err(ArchiveError::Read)? {
            let mut entry = entry.map_err(ArchiveError::Read)?;
            let path = normalize(&entry.path().map_err(ArchiveError::Read)?);
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    if entry.size() <= SMALL_FILE {
                        let mut bytes = Vec::with_capacity(entry.size() as usize);
                        entry.read_to_end(&mut bytes).map_err(ArchiveError::Read)?;
                        members.small.insert(path, bytes);
                    } else {
                        let expected = oci_blob_digest(&path);
                        let blob = store.put_blob(&mut entry, expected.as_ref())?;
                        members.stored.insert(path, blob);
                    }
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let target = entry
                        .link_name()
                        .map_err(ArchiveError::Read)?
                        .ok_or_else(|| ArchiveError::Missing(path.clone()))?;
                    // Symlink targets are relative to the link's directory; hard link targets
                    // are archive paths.
                    let target = if entry.header().entry_type() == tar::EntryType::Symlink {
                        let dir = Path::new(&path).parent().unwrap_or(Path::new(""));
                        normalize(&dir.join(target))
                    } else {
                        normalize(&target)
                    };
                    members.links.insert(path, target);
                }
                _ => {}
            }
        }
        Ok(members)
    }

    fn resolve_link<'a>(&'a self, mut path: &'a str) -> &'a str {
        for _ in 0..16 {
            match self.links.get(path) {
                Some(target) => path = target,
                None => break,
            }
        }
        path
    }

    fn bytes(&self, path: &str) -> Option<&[u8]> {
        self.small.get(self.resolve_link(path)).map(Vec::as_slice)
    }

    fn json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ArchiveError> {
        let bytes = self
            .bytes(path)
            .ok_or_else(|| ArchiveError::Missing(path.to_string()))?;
        serde_json::from_slice(bytes).map_err(|source| ArchiveError::BadJson {
            path: path.to_string(),
            source,
        })
    }

    /// Puts the member `path` into the store (verifying `expected`) unless it is there already.
    fn store(
        &self,
        store: &ImageStore,
        path: &str,
        expected: Option<&Digest>,
    ) -> Result<Blob, ArchiveError> {
        let path = self.resolve_link(path);
        if let Some(bytes) = self.small.get(path) {
            return Ok(store.put_blob(&bytes[..], expected)?);
        }
        match self.stored.get(path) {
            Some(blob) => match expected {
                Some(d) if *d != blob.digest => Err(StoreError::DigestMismatch {
                    expected: d.clone(),
                    actual: blob.digest.clone(),
                }
                .into()),
                _ => Ok(blob.clone()),
            },
            None => Err(ArchiveError::Missing(path.to_string())),
        }
    }

    /// Stores the OCI blob `digest` from `blobs/<alg>/<hex>`, or finds it already stored.
    fn store_oci_blob(&self, store: &ImageStore, digest: &Digest) -> Result<Blob, ArchiveError> {
        let path = format!("blobs/{}/{}", digest.algorithm(), digest.digest());
        match self.store(store, &path, Some(digest)) {
            Err(ArchiveError::Missing(_)) if store.has_blob(digest)? => Ok(Blob {
                digest: digest.clone(),
                size: store.blob_size(digest)?.unwrap_or(0),
            }),
            other => other,
        }
    }
}

/// Reads an archive in either format (an OCI layout wins when both are present, as in Docker
/// 25+'s archives, because it carries the original manifests), stores its images and tags them.
///
/// Members over 4 MiB are stored as blobs while the archive streams past (so a layer is read
/// once); any such member no manifest names stays until the next prune. Hold the state lock.
pub fn load(store: &ImageStore, reader: impl Read) -> Result<Vec<Loaded>, ArchiveError> {
    let members = Members::read(store, reader)?;
    // Members over SMALL_FILE (the manifest cap too) went to the blob store unread; an index
    // that large is refused by name rather than reported missing.
    for path in ["index.json", "manifest.json"] {
        if let Some(blob) = members.stored.get(members.resolve_link(path)) {
            return Err(ArchiveError::TooLarge {
                what: path.to_string(),
                size: blob.size,
            });
        }
    }
    if members.bytes("index.json").is_some() && members.bytes("oci-layout").is_some() {
        load_oci(store, &members)
    } else if members.bytes("manifest.json").is_some() {
        load_docker(store, &members)
    } else {
        Err(ArchiveError::NotAnArchive)
    }
}

fn load_oci(store: &ImageStore, members: &Members) -> Result<Vec<Loaded>, ArchiveError> {
    if let Some(bytes) = members.bytes("index.json") {
        check_unambiguous(bytes).map_err(|message| ArchiveError::Document {
            path: "index.json".to_string(),
            message,
        })?;
    }
    let index: ImageIndex = members.json("index.json")?;
    let mut loaded = Vec::new();
    for entry in index.manifests() {
        let manifest = pick_manifest(store, members, entry)?;
        let image: oci_spec::image::ImageManifest = store.read_json(manifest.digest())?;
        for blob in std::iter::once(image.config()).chain(image.layers()) {
            let stored = members.store_oci_blob(store, blob.digest())?;
            check_size(blob, &stored)?;
        }
        // The config is read whole whenever the image is used, as a manifest is.
        if image.config().size() > MAX_MANIFEST_SIZE {
            return Err(ArchiveError::TooLarge {
                what: format!("image config {}", image.config().digest()),
                size: image.config().size(),
            });
        }
        let name = entry.annotations().as_ref().and_then(|a| {
            a.get(ANNOTATION_CONTAINERD_NAME)
                .or_else(|| a.get(ANNOTATION_REF_NAME))
                .cloned()
        });
        // A bare `ref.name` is a tag without a repository (skopeo's `oci-archive:f.tar:tag`):
        // there is nothing to name the image by.
        let name = match name {
            Some(n) if n.contains('/') || n.contains(':') => Some(Reference::parse(&n)?),
            _ => None,
        };
        match &name {
            Some(name) => store.tag(name, &manifest)?,
            None => store.keep_untagged(&manifest)?,
        }
        loaded.push(Loaded {
            name,
            manifest,
            id: image.config().digest().clone(),
        });
    }
    Ok(loaded)
}

/// Stores the manifest `entry` names; for an index, the host platform's manifest (or the only
/// one the archive holds).
fn pick_manifest(
    store: &ImageStore,
    members: &Members,
    entry: &Descriptor,
) -> Result<Descriptor, ArchiveError> {
    let blob = members.store_oci_blob(store, entry.digest())?;
    check_document(store, entry, &blob)?;
    if !descriptor_is_index(entry) {
        let mut d = entry.clone();
        d.set_annotations(None);
        return Ok(d);
    }
    let index: ImageIndex = store.read_json(entry.digest())?;
    let (arch, os, _) = host_platform();
    let present = |d: &&Descriptor| {
        is_manifest(d.media_type()) && members.store_oci_blob(store, d.digest()).is_ok()
    };
    let candidates: Vec<&Descriptor> = index.manifests().iter().filter(present).collect();
    let host = candidates.iter().find(|d| {
        d.platform()
            .as_ref()
            .is_some_and(|p| p.architecture().to_string() == arch && p.os().to_string() == os)
    });
    let chosen = host
        .or(candidates.first())
        .ok_or_else(|| ArchiveError::NoPlatform(entry.digest().clone()))?;
    let blob = members.store_oci_blob(store, chosen.digest())?;
    check_document(store, chosen, &blob)?;
    let mut d = (*chosen).clone();
    d.set_annotations(None);
    d.set_platform(None);
    Ok(d)
}

/// Refuses a blob whose size is not what its descriptor says, as a pull does.
fn check_size(descriptor: &Descriptor, blob: &Blob) -> Result<(), ArchiveError> {
    if descriptor.size() != blob.size {
        return Err(ArchiveError::SizeMismatch {
            digest: descriptor.digest().clone(),
            expected: descriptor.size(),
            actual: blob.size,
        });
    }
    Ok(())
}

/// Checks a manifest or index the archive holds before it is read: its size against its
/// descriptor and the cap, and that it reads only one way.
fn check_document(
    store: &ImageStore,
    descriptor: &Descriptor,
    blob: &Blob,
) -> Result<(), ArchiveError> {
    check_size(descriptor, blob)?;
    if blob.size > MAX_MANIFEST_SIZE {
        return Err(ArchiveError::TooLarge {
            what: format!("manifest {}", blob.digest),
            size: blob.size,
        });
    }
    check_unambiguous(&store.read_blob(&blob.digest)?).map_err(|message| {
        ArchiveError::BadManifest {
            digest: blob.digest.clone(),
            message,
        }
    })
}

/// A `RepoTags` entry as the name it tags: `NAME:TAG`, nothing less (Docker's
/// `reference.NamedTagged`); a bare `latest` would otherwise be read as the repository
/// `library/latest`.
fn repo_tag(tag: &str) -> Result<Reference, ArchiveError> {
    let invalid = |reason: String| ArchiveError::InvalidTag {
        tag: tag.to_string(),
        reason,
    };
    // `Reference::parse` fills in `latest`, so the tag must be looked for in the text: a colon
    // after the last slash (before it, a colon is a registry's port).
    let last = tag.rsplit('/').next().unwrap_or(tag);
    if !last.contains(':') || tag.contains('@') {
        return Err(invalid("a RepoTags entry is NAME:TAG".to_string()));
    }
    Reference::parse(tag).map_err(|e| invalid(e.to_string()))
}

fn load_docker(store: &ImageStore, members: &Members) -> Result<Vec<Loaded>, ArchiveError> {
    let entries: Vec<DockerManifestEntry> = members.json("manifest.json")?;
    // Before anything is tagged, so a bad name leaves no half-loaded archive.
    for entry in &entries {
        for tag in &entry.repo_tags {
            repo_tag(tag)?;
        }
    }
    let mut loaded = Vec::new();
    for entry in entries {
        let what = entry
            .repo_tags
            .first()
            .cloned()
            .unwrap_or_else(|| entry.config.clone());
        let config_blob = members.store(store, &entry.config, None)?;
        if config_blob.size > MAX_MANIFEST_SIZE {
            return Err(ArchiveError::TooLarge {
                what: format!("image config {}", entry.config),
                size: config_blob.size,
            });
        }
        let config: ImageConfig = store.read_json(&config_blob.digest)?;
        if config.rootfs.diff_ids.len() != entry.layers.len() {
            return Err(ArchiveError::LayerCount {
                image: what,
                layers: entry.layers.len(),
                diff_ids: config.rootfs.diff_ids.len(),
            });
        }
        let mut layers = Vec::new();
        for (path, diff_id) in entry.layers.iter().zip(&config.rootfs.diff_ids) {
            let blob = members.store(store, path, None)?;
            let mut head = [0u8; 4];
            let n = store
                .open_blob(&blob.digest)?
                .read(&mut head)
                .map_err(ArchiveError::Read)?;
            let layer = blob.descriptor(Compression::sniff(&head[..n]).oci_layer_media_type());
            let actual = if Compression::sniff(&head[..n]) == Compression::None {
                blob.digest.clone()
            } else {
                uncompressed_digest(store, &layer, &mut io::sink())?
            };
            if actual != *diff_id {
                return Err(ArchiveError::DiffIdMismatch(Box::new(DiffIdMismatch {
                    image: what,
                    layer: path.clone(),
                    expected: diff_id.clone(),
                    actual,
                })));
            }
            layers.push(layer);
        }
        let manifest = image_manifest(config_blob.descriptor(MediaType::ImageConfig), layers);
        let manifest = store.put_json(MediaType::ImageManifest, &manifest)?;
        let names = if entry.repo_tags.is_empty() {
            vec![None]
        } else {
            entry
                .repo_tags
                .iter()
                .map(|t| repo_tag(t).map(Some))
                .collect::<Result<_, _>>()?
        };
        for name in names {
            match &name {
                Some(name) => store.tag(name, &manifest)?,
                None => store.keep_untagged(&manifest)?,
            }
            loaded.push(Loaded {
                name,
                manifest: manifest.clone(),
                id: config_blob.digest.clone(),
            });
        }
    }
    Ok(loaded)
}

/// What `img import` sets besides the layer: `--change` instructions already applied to a
/// container config, and `--message`.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    pub config: ContainerConfig,
    /// The history comment; Docker writes "Imported from -" for stdin.
    pub comment: Option<String>,
}

/// Stores a root file system tar (plain or gzip) as a one-layer image for the host platform and
/// tags it `name` (`img import ROOTFS.tar NAME`).
///
/// A plain tar is gzipped on the way in, and a gzip one is stored as it is: layers must be
/// compressed to be pushed anyway, and compressing once here, while the bytes stream past, costs
/// less than reading the blob again at push time. The diff ID is hashed from the same stream.
pub fn import_rootfs(
    store: &ImageStore,
    reader: impl Read,
    name: &Reference,
    options: ImportOptions,
) -> Result<Loaded, ArchiveError> {
    let mut input = BufReader::with_capacity(1 << 20, reader);
    let head = input.fill_buf().map_err(ArchiveError::Read)?.to_vec();
    let (blob, diff_id) = match Compression::sniff(&head) {
        Compression::Gzip => {
            let blob = store.put_blob(&mut input, None)?;
            let mut block = [0u8; 512];
            let mut decoder = GzDecoder::new(BufReader::new(store.open_blob(&blob.digest)?));
            decoder
                .read_exact(&mut block)
                .map_err(|_| ArchiveError::NotATar)?;
            if !is_tar_header(&block) {
                return Err(ArchiveError::NotATar);
            }
            let mut rest = io::Cursor::new(block).chain(decoder);
            let diff_id = hash_copy(&mut rest, &mut io::sink()).map_err(ArchiveError::Read)?;
            (blob, diff_id)
        }
        Compression::None if head.len() >= 512 && is_tar_header(&head[..512]) => {
            let mut encoder = GzEncoder::new(store.blob_writer()?, flate2::Compression::default());
            let diff_id = hash_copy(&mut input, &mut encoder).map_err(ArchiveError::Read)?;
            let writer = encoder.finish().map_err(ArchiveError::Write)?;
            (writer.commit(None)?, diff_id)
        }
        _ => return Err(ArchiveError::NotATar),
    };
    let layer = blob.descriptor(MediaType::ImageLayerGzip);
    let now = Utc::now();
    let mut config = ImageConfig::for_host();
    config.set_created(now);
    config.config = options.config;
    config.push_layer(
        diff_id,
        History {
            created: config.created.clone(),
            comment: options.comment,
            ..History::default()
        },
    );
    let manifest = store.put_image(&config, vec![layer])?;
    store.tag(name, &manifest)?;
    Ok(Loaded {
        name: Some(name.clone()),
        id: sha_of_config(&config),
        manifest,
    })
}

fn sha_of_config(config: &ImageConfig) -> Digest {
    super::sha256_digest(&config.to_json())
}

/// Whether a 512-byte block is a tar header with a valid checksum, or the all-zero block that
/// ends (or is the whole of) an empty archive.
fn is_tar_header(block: &[u8]) -> bool {
    if block.iter().all(|&b| b == 0) {
        return true;
    }
    let header = tar::Header::from_byte_slice(block);
    header.cksum().is_ok_and(|sum| {
        let computed: u32 = block[..148]
            .iter()
            .chain(&[b' '; 8])
            .chain(&block[156..])
            .map(|&b| u32::from(b))
            .sum();
        sum == computed
    })
}

//! `ImageStore`: content-addressed blobs under `<state>/blobs/sha256`, the names index
//! `<state>/images.json` (names, and the images kept without one), and garbage collection of
//! blobs no image reaches.
//!
//! Crash safety: every file reaches its final name by rename(2) of a complete, fsynced temporary
//! file in the same directory, followed by an fsync of the directory. A killed process therefore
//! leaves the old state or the new one, plus at worst a `.tmp-*` file that `prune` removes. Blobs
//! are never modified once named; the index is replaced whole.
//!
//! Concurrency: the store itself takes no lock. Every process that writes (put, tag, untag,
//! prune) holds the [`StateLock`](super::StateLock); readers need none, because the index is
//! replaced atomically and blobs are immutable.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use oci_spec::image::{Descriptor, Digest, DigestAlgorithm, ImageIndex, ImageManifest, MediaType};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tempfile::NamedTempFile;

use super::config::{ImageConfig, canonical_json};
use super::distribute::CompressedMap;
use super::reference::{Reference, ReferenceError};
use super::{digest_from_hasher, image_manifest, is_index, is_manifest};

const INDEX_FILE: &str = "images.json";
const INDEX_VERSION: u32 = 1;
const TMP_PREFIX: &str = ".tmp-";
/// Blobs larger than this are never read as JSON while marking reachable blobs: manifests and
/// indexes are kilobytes, and reading a layer to find it is not one would cost its size.
const MAX_JSON_BLOB: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}", imgfs::space::io_message(op, &path.display(), source))]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("blob content hashes to {actual}, expected {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("unsupported digest {0}: the store keeps sha256 blobs only")]
    UnsupportedDigest(Digest),
    #[error("blob {0} is not in the store")]
    BlobNotFound(Digest),
    #[error("invalid JSON in blob {digest}: {source}")]
    BadJson {
        digest: Digest,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid names index {path}: {source}")]
    BadIndex {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("no image named {0}")]
    NotFound(String),
    #[error("image ID prefix {0} matches more than one image")]
    Ambiguous(String),
    #[error("cannot tag {0}: a name needs a tag, not a digest")]
    TagWithDigest(String),
    #[error("blob {digest} has media type {media_type}, not an image manifest")]
    NotAManifest { digest: Digest, media_type: String },
    #[error(transparent)]
    Reference(#[from] ReferenceError),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { op, path, source }
}

/// Reads one of the state's JSON files, or `missing()` when there is none yet.
pub(super) fn read_json_file<T: DeserializeOwned>(
    path: PathBuf,
    missing: impl FnOnce() -> T,
) -> Result<T, StoreError> {
    match fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|source| StoreError::BadIndex { path, source })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(missing()),
        Err(e) => Err(io_err("read", &path)(e)),
    }
}

/// Replaces one of the state's JSON files in one step (pretty-printed, owner-only).
pub(super) fn write_json_file<T: Serialize>(path: PathBuf, value: &T) -> Result<(), StoreError> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("state files serialize");
    bytes.push(b'\n');
    imgfs::atomic::write_atomically(&path, 0o600, |f| f.write_all(&bytes))
        .map_err(io_err("write", &path))
}

/// A stored blob: its digest and size.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Blob {
    pub digest: Digest,
    pub size: u64,
}

impl Blob {
    pub fn descriptor(&self, media_type: MediaType) -> Descriptor {
        Descriptor::new(media_type, self.size, self.digest.clone())
    }
}

/// An image as a name resolves to it.
#[derive(Clone, Debug)]
pub struct Image {
    /// `None` for an image kept without a name (`<none>` in `img ls`, as Docker's dangling
    /// images), which only its ID reaches.
    pub name: Option<Reference>,
    pub manifest_descriptor: Descriptor,
    pub manifest_digest: Digest,
    pub manifest: ImageManifest,
    pub config: ImageConfig,
    /// When this name was first given to an image in this store.
    pub created: DateTime<Utc>,
    /// When this name was last pointed at an image.
    pub updated: DateTime<Utc>,
}

impl Image {
    /// The image ID as Docker shows it: the config digest.
    pub fn id(&self) -> &Digest {
        self.manifest.config().digest()
    }

    /// The name as `img ls` shows it: familiar, or `<none>`.
    pub fn display_name(&self) -> String {
        self.name
            .as_ref()
            .map_or_else(|| "<none>".to_string(), Reference::familiar)
    }

    /// Bytes of the manifest, config and layers as stored (a built image's layers uncompressed,
    /// a pulled one's compressed), shared layers counted.
    pub fn size(&self) -> u64 {
        self.manifest_descriptor.size()
            + self.manifest.config().size()
            + self.manifest.layers().iter().map(|l| l.size()).sum::<u64>()
    }
}

/// Blobs nothing reaches, and temporary files left by killed writers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Garbage {
    pub blobs: Vec<Blob>,
    pub temp_files: Vec<PathBuf>,
    /// Total size of `blobs` and `temp_files`.
    pub bytes: u64,
}

/// What the blob store holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub blobs: u64,
    pub bytes: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct NamesIndex {
    version: u32,
    images: BTreeMap<String, NameEntry>,
    /// Images kept without a name (an archive that names none), by manifest digest. A name
    /// given to one of them takes it out of here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    untagged: BTreeMap<String, NameEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct NameEntry {
    manifest: Descriptor,
    created: DateTime<Utc>,
    updated: DateTime<Utc>,
}

/// The OCI content and names under one state dir.
#[derive(Clone, Debug)]
pub struct ImageStore {
    root: PathBuf,
    blobs: PathBuf,
}

/// Writes a blob while hashing it; `commit` names it by its digest.
pub struct BlobWriter {
    file: BufWriter<NamedTempFile>,
    /// `None` for a layer writer (`ImageStore::layer_writer`), whose producer hashes.
    hasher: Option<Sha256>,
    size: u64,
    dir: PathBuf,
    /// Bytes the kernel was told to start writing out (`start_writeback`).
    kicked: u64,
}

/// Written bytes after which the kernel is told to start writing them out, so `commit`'s fsync
/// finds little left: a 50 MB blob otherwise waits ~50 ms for all of it there.
const WRITEBACK_STEP: u64 = 8 << 20;

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        if let Some(hasher) = &mut self.hasher {
            hasher.update(&buf[..n]);
        }
        self.size += n as u64;
        let flushed = self.flushed();
        if flushed - self.kicked >= WRITEBACK_STEP {
            start_writeback(
                self.file.get_ref().as_file(),
                self.kicked,
                flushed - self.kicked,
            );
            self.kicked = flushed;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl BlobWriter {
    /// A second handle on the file being written, for reading the blob while it arrives (a pull
    /// applies a layer as it downloads). Only `flushed` bytes of it are there to read.
    pub fn reopen(&self) -> io::Result<File> {
        self.file.get_ref().reopen()
    }

    /// Bytes written through to the file so far (the rest is still in the write buffer).
    pub fn flushed(&self) -> u64 {
        self.size - self.file.buffer().len() as u64
    }

    /// Makes the written bytes durable under their digest. With `expected`, a different digest is
    /// an error and nothing is stored. Dropping a writer without committing stores nothing.
    ///
    /// # Panics
    /// A layer writer (`ImageStore::layer_writer`) without `expected`: it has no digest of its own.
    pub fn commit(self, expected: Option<&Digest>) -> Result<Blob, StoreError> {
        let digest = match (self.hasher, expected) {
            (Some(hasher), _) => digest_from_hasher(hasher),
            (None, Some(expected)) => expected.clone(),
            (None, None) => panic!("a layer writer commits under its producer's digest"),
        };
        if let Some(expected) = expected
            && *expected != digest
        {
            return Err(StoreError::DigestMismatch {
                expected: expected.clone(),
                actual: digest,
            });
        }
        let tmp = self.file.into_inner().map_err(|e| StoreError::Io {
            op: "write blob in",
            path: self.dir.clone(),
            source: e.into_error(),
        })?;
        tmp.as_file()
            .sync_all()
            .map_err(io_err("sync", tmp.path()))?;
        let path = self.dir.join(digest.digest());
        // Replacing an existing blob is harmless: same digest, same bytes.
        tmp.persist(&path).map_err(|e| StoreError::Io {
            op: "rename blob to",
            path: path.clone(),
            source: e.error,
        })?;
        sync_dir(&self.dir)?;
        Ok(Blob {
            digest,
            size: self.size,
        })
    }
}

/// Asks the kernel to start writing `len` bytes of `file` from `offset` to disk, without waiting
/// and without any durability promise (`commit` still syncs). Failure only costs time, so it is
/// ignored.
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range only reads its integer arguments; an invalid fd is an error
    // return, not undefined behaviour.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

impl ImageStore {
    /// Opens the store in `state_dir`, which must exist; the blob directory is made on first use.
    pub fn open(state_dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let root = state_dir.as_ref().to_path_buf();
        fs::metadata(&root).map_err(io_err("open state dir", &root))?;
        let blobs = root.join("blobs").join("sha256");
        fs::create_dir_all(&blobs).map_err(io_err("create", &blobs))?;
        Ok(Self { root, blobs })
    }

    pub fn state_dir(&self) -> &Path {
        &self.root
    }

    /// Where the blob `digest` lives (whether or not it is there).
    pub fn blob_path(&self, digest: &Digest) -> Result<PathBuf, StoreError> {
        // The sha256 check also keeps untrusted digests (from archives) from naming other paths:
        // oci-spec guarantees 64 lowercase hex digits for sha256.
        match digest.algorithm() {
            DigestAlgorithm::Sha256 => Ok(self.blobs.join(digest.digest())),
            _ => Err(StoreError::UnsupportedDigest(digest.clone())),
        }
    }

    pub fn has_blob(&self, digest: &Digest) -> Result<bool, StoreError> {
        let path = self.blob_path(digest)?;
        match fs::symlink_metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("stat", &path)(e)),
        }
    }

    /// The blob's size, or `None` when absent.
    pub fn blob_size(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        let path = self.blob_path(digest)?;
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("stat", &path)(e)),
        }
    }

    pub fn open_blob(&self, digest: &Digest) -> Result<File, StoreError> {
        let path = self.blob_path(digest)?;
        File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::BlobNotFound(digest.clone()),
            _ => io_err("open", &path)(e),
        })
    }

    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let mut bytes = Vec::new();
        self.open_blob(digest)?
            .read_to_end(&mut bytes)
            .map_err(io_err("read", &self.blob_path(digest)?))?;
        Ok(bytes)
    }

    /// Reads a JSON blob (manifest, config, index).
    pub fn read_json<T: DeserializeOwned>(&self, digest: &Digest) -> Result<T, StoreError> {
        serde_json::from_slice(&self.read_blob(digest)?).map_err(|source| StoreError::BadJson {
            digest: digest.clone(),
            source,
        })
    }

    /// Starts writing a blob of unknown digest, hashing it as it comes.
    pub fn blob_writer(&self) -> Result<BlobWriter, StoreError> {
        self.writer(Some(Sha256::new()))
    }

    /// Starts writing a layer whose producer hashes it as it writes (a snapshot's diff, which
    /// reports its diff ID): the writer does not hash the same bytes a second time, and
    /// `commit` must be given that digest. The producer's hash is over exactly the bytes it
    /// writes here, so what is stored still matches its name.
    pub fn layer_writer(&self) -> Result<BlobWriter, StoreError> {
        self.writer(None)
    }

    fn writer(&self, hasher: Option<Sha256>) -> Result<BlobWriter, StoreError> {
        let tmp = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .tempfile_in(&self.blobs)
            .map_err(io_err("create temporary file in", &self.blobs))?;
        Ok(BlobWriter {
            file: BufWriter::with_capacity(1 << 20, tmp),
            hasher,
            size: 0,
            dir: self.blobs.clone(),
            kicked: 0,
        })
    }

    /// Stores what `reader` yields. With `expected`, content that hashes differently is refused,
    /// and a blob already present is not read again (nothing is read from `reader`).
    pub fn put_blob(
        &self,
        mut reader: impl Read,
        expected: Option<&Digest>,
    ) -> Result<Blob, StoreError> {
        if let Some(digest) = expected
            && let Some(size) = self.blob_size(digest)?
        {
            return Ok(Blob {
                digest: digest.clone(),
                size,
            });
        }
        let mut writer = self.blob_writer()?;
        io::copy(&mut reader, &mut writer).map_err(io_err("write blob in", &self.blobs))?;
        writer.commit(expected)
    }

    /// Stores `value` as canonical JSON (sorted keys, no whitespace), so equal values get equal
    /// digests, and returns its descriptor.
    pub fn put_json<T: Serialize>(
        &self,
        media_type: MediaType,
        value: &T,
    ) -> Result<Descriptor, StoreError> {
        let bytes = canonical_json(value);
        Ok(self.put_blob(&bytes[..], None)?.descriptor(media_type))
    }

    /// Stores a config and a manifest over `layers` (already stored) and returns the manifest's
    /// descriptor, ready for `tag`: how a build or an import finishes an image.
    pub fn put_image(
        &self,
        config: &ImageConfig,
        layers: Vec<Descriptor>,
    ) -> Result<Descriptor, StoreError> {
        let config = self.put_blob(&config.to_json()[..], None)?;
        let manifest = image_manifest(config.descriptor(MediaType::ImageConfig), layers);
        self.put_json(MediaType::ImageManifest, &manifest)
    }

    fn index_path(&self) -> PathBuf {
        self.root.join(INDEX_FILE)
    }

    fn read_index(&self) -> Result<NamesIndex, StoreError> {
        read_json_file(self.index_path(), || NamesIndex {
            version: INDEX_VERSION,
            ..NamesIndex::default()
        })
    }

    fn write_index(&self, index: &NamesIndex) -> Result<(), StoreError> {
        write_json_file(self.index_path(), index)
    }

    /// Points `name` at the image manifest `manifest`. The manifest, its config and its layers
    /// must already be stored: a name never points at an incomplete image.
    pub fn tag(&self, name: &Reference, manifest: &Descriptor) -> Result<(), StoreError> {
        if name.digest().is_some() || name.tag().is_none() {
            return Err(StoreError::TagWithDigest(name.to_string()));
        }
        self.read_manifest(manifest)?;
        let mut index = self.read_index()?;
        let now = Utc::now();
        let created = index
            .images
            .get(&name.to_string())
            .map_or(now, |e| e.created);
        index.images.insert(
            name.to_string(),
            NameEntry {
                manifest: manifest.clone(),
                created,
                updated: now,
            },
        );
        index.untagged.remove(&manifest.digest().to_string());
        self.write_index(&index)
    }

    /// Keeps the image manifest `manifest` as an image without a name (Docker's dangling
    /// image), unless a name already points at it: `img ls` lists it as `<none>`, its ID
    /// resolves to it, `img rm ID` removes it, and `img tag ID NAME` names it.
    pub fn keep_untagged(&self, manifest: &Descriptor) -> Result<(), StoreError> {
        self.read_manifest(manifest)?;
        let mut index = self.read_index()?;
        if index
            .images
            .values()
            .any(|e| e.manifest.digest() == manifest.digest())
        {
            return Ok(());
        }
        let now = Utc::now();
        let key = manifest.digest().to_string();
        let created = index.untagged.get(&key).map_or(now, |e| e.created);
        index.untagged.insert(
            key,
            NameEntry {
                manifest: manifest.clone(),
                created,
                updated: now,
            },
        );
        self.write_index(&index)
    }

    /// Reads an image manifest and checks that its config and layers are present.
    fn read_manifest(&self, descriptor: &Descriptor) -> Result<ImageManifest, StoreError> {
        let digest = descriptor.digest();
        if !is_manifest(descriptor.media_type()) {
            return Err(StoreError::NotAManifest {
                digest: digest.clone(),
                media_type: descriptor.media_type().to_string(),
            });
        }
        let manifest: ImageManifest = self.read_json(digest)?;
        for blob in std::iter::once(manifest.config()).chain(manifest.layers()) {
            if !self.has_blob(blob.digest())? {
                return Err(StoreError::BlobNotFound(blob.digest().clone()));
            }
        }
        Ok(manifest)
    }

    fn load_image(
        &self,
        name: Option<Reference>,
        manifest_descriptor: Descriptor,
        created: DateTime<Utc>,
        updated: DateTime<Utc>,
    ) -> Result<Image, StoreError> {
        let manifest = self.read_manifest(&manifest_descriptor)?;
        let config = self.read_json(manifest.config().digest())?;
        Ok(Image {
            name,
            manifest_digest: manifest_descriptor.digest().clone(),
            manifest_descriptor,
            manifest,
            config,
            created,
            updated,
        })
    }

    /// Finds an image by name (`busybox`, `docker.io/library/busybox:latest`), by manifest digest
    /// (`busybox@sha256:...`, whose manifest must be stored; an index digest stands for the
    /// platform manifest of it that is stored), or by a prefix of its ID as
    /// `img ls` prints it (`sha256:` optional), in that order, as Docker does.
    pub fn resolve(&self, name: &str) -> Result<Image, StoreError> {
        self.resolve_as(name, true)
    }

    /// `resolve` as a Dockerfile's `FROM` reads a name: by ID only when the ID is spelled out
    /// (64 hex digits, or `sha256:` and at least 12 of them), so that `FROM b` means the image
    /// named `b` (pulled if missing), never whichever stored image's ID starts with b.
    pub fn resolve_from(&self, name: &str) -> Result<Image, StoreError> {
        self.resolve_as(name, false)
    }

    fn resolve_as(&self, name: &str, short_ids: bool) -> Result<Image, StoreError> {
        let parsed = Reference::parse(name);
        let index = self.read_index()?;
        if let Ok(reference) = &parsed {
            if let Some(digest) = reference.digest() {
                let size = self
                    .blob_size(&digest)?
                    .ok_or_else(|| StoreError::NotFound(name.to_string()))?;
                let bytes = self.read_blob(&digest)?;
                let media_type = manifest_media_type(&bytes);
                let descriptor = if is_index(&media_type) {
                    self.stored_platform_manifest(&digest, &bytes)?
                        .ok_or_else(|| StoreError::NotFound(name.to_string()))?
                } else {
                    Descriptor::new(media_type, size, digest)
                };
                let now = Utc::now();
                return self.load_image(Some(reference.clone()), descriptor, now, now);
            }
            if let Some(entry) = index.images.get(&reference.to_string()) {
                return self.load_image(
                    Some(reference.clone()),
                    entry.manifest.clone(),
                    entry.created,
                    entry.updated,
                );
            }
        }
        let prefix = name.strip_prefix("sha256:").unwrap_or(name);
        let spelled_out = if prefix.len() == name.len() {
            prefix.len() == 64
        } else {
            prefix.len() >= 12
        };
        if prefix.is_empty()
            || !prefix.bytes().all(|b| b.is_ascii_hexdigit())
            || !(short_ids || spelled_out)
        {
            parsed?;
            return Err(StoreError::NotFound(name.to_string()));
        }
        let mut found: Option<Image> = None;
        for image in self.images_of(index) {
            let image = image?;
            if image.id().digest().starts_with(prefix) {
                match &found {
                    Some(other) if other.id() != image.id() => {
                        return Err(StoreError::Ambiguous(name.to_string()));
                    }
                    Some(_) => {}
                    None => found = Some(image),
                }
            }
        }
        found.ok_or_else(|| StoreError::NotFound(name.to_string()))
    }

    /// The manifest `name@<index digest>` stands for: of the index's image manifests that are
    /// stored complete, the host platform's, else the first. A pull by index digest stores the
    /// index beside the one platform manifest it chose, so this finds that manifest again
    /// without a registry; `None` when no entry of the index is stored.
    fn stored_platform_manifest(
        &self,
        digest: &Digest,
        bytes: &[u8],
    ) -> Result<Option<Descriptor>, StoreError> {
        let index: ImageIndex =
            serde_json::from_slice(bytes).map_err(|source| StoreError::BadJson {
                digest: digest.clone(),
                source,
            })?;
        let (architecture, os, variant) = super::platform::host_platform();
        let is_host = |d: &Descriptor| {
            d.platform().as_ref().is_some_and(|p| {
                p.os().to_string() == os
                    && p.architecture().to_string() == architecture
                    && (p.variant().is_none() || variant.is_none() || *p.variant() == variant)
            })
        };
        let mut stored = Vec::new();
        for d in index.manifests() {
            // An entry may be a nested index or an artifact; only image manifests resolve, and
            // only when their config and layers are here too.
            if is_manifest(d.media_type()) && self.read_manifest(d).is_ok() {
                stored.push(d);
            }
        }
        Ok(stored
            .iter()
            .find(|d| is_host(d))
            .or(stored.first())
            .map(|d| (*d).clone()))
    }

    /// Every image: the named ones sorted by name, then those without a name.
    pub fn list(&self) -> Result<Vec<Image>, StoreError> {
        self.images_of(self.read_index()?).collect()
    }

    fn images_of(&self, index: NamesIndex) -> impl Iterator<Item = Result<Image, StoreError>> {
        let named = index.images.into_iter().map(|(key, entry)| {
            self.load_image(
                Some(Reference::parse(&key)?),
                entry.manifest,
                entry.created,
                entry.updated,
            )
        });
        let untagged = index
            .untagged
            .into_values()
            .map(|entry| self.load_image(None, entry.manifest, entry.created, entry.updated));
        named.chain(untagged)
    }

    /// Removes the name `name`, or the image without a name whose ID `name` is (a prefix of,
    /// as `img ls` prints IDs); the image's blobs stay until `remove` or `prune`. Returns the
    /// manifest the name pointed at.
    pub fn untag(&self, name: &str) -> Result<Descriptor, StoreError> {
        let reference = Reference::parse(name);
        let mut index = self.read_index()?;
        let entry = match reference
            .as_ref()
            .ok()
            .and_then(|r| index.images.remove(&r.to_string()))
        {
            Some(entry) => entry,
            None => {
                let key = self
                    .untagged_by_id(&index, name)?
                    .ok_or_else(|| match reference {
                        Err(e) => StoreError::Reference(e),
                        Ok(_) => StoreError::NotFound(name.to_string()),
                    })?;
                index.untagged.remove(&key).expect("the key was just found")
            }
        };
        self.write_index(&index)?;
        Ok(entry.manifest)
    }

    /// The key of the one image without a name whose ID starts with `id` (`sha256:` optional).
    fn untagged_by_id(&self, index: &NamesIndex, id: &str) -> Result<Option<String>, StoreError> {
        let prefix = id.strip_prefix("sha256:").unwrap_or(id);
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let mut found = None;
        for (key, entry) in &index.untagged {
            let manifest: ImageManifest = self.read_json(entry.manifest.digest())?;
            if manifest.config().digest().digest().starts_with(prefix) {
                if found.is_some() {
                    return Err(StoreError::Ambiguous(id.to_string()));
                }
                found = Some(key.clone());
            }
        }
        Ok(found)
    }

    /// Untags `name` and deletes the image's blobs that no other name and none of `extra_roots`
    /// reach (`img rmi`). Other garbage is left for `prune`.
    pub fn remove(&self, name: &str, extra_roots: &[Digest]) -> Result<Garbage, StoreError> {
        let descriptor = self.untag(name)?;
        let manifest: ImageManifest = self.read_json(descriptor.digest())?;
        let map = self.read_compressed_map()?;
        let reachable = self.reachable(extra_roots, &map)?;
        let mut garbage = Garbage::default();
        let layers: HashSet<&str> = manifest
            .layers()
            .iter()
            .map(|l| l.digest().digest())
            .collect();
        let compressed = map.compressed_of(|hex| layers.contains(hex));
        let candidates = std::iter::once(descriptor.digest())
            .chain(std::iter::once(manifest.config().digest()))
            .chain(manifest.layers().iter().map(|l| l.digest()))
            .chain(&compressed);
        let mut seen = HashSet::new();
        for digest in candidates {
            if reachable.contains(digest.digest()) || !seen.insert(digest.digest().to_string()) {
                continue;
            }
            if let Some(size) = self.blob_size(digest)? {
                garbage.bytes += size;
                garbage.blobs.push(Blob {
                    digest: digest.clone(),
                    size,
                });
            }
        }
        self.delete(&garbage)?;
        self.forget_missing_compressed(map)?;
        Ok(garbage)
    }

    /// The hex digests of every blob reachable from a name or from `extra_roots` (e.g. the build
    /// cache's layers), following manifests and indexes, and the compressed blobs of the
    /// uncompressed layers among them (`distribute`).
    fn reachable(
        &self,
        extra_roots: &[Digest],
        map: &CompressedMap,
    ) -> Result<HashSet<String>, StoreError> {
        let index = self.read_index()?;
        let mut seen = HashSet::new();
        let mut stack: Vec<Digest> = index
            .images
            .values()
            .chain(index.untagged.values())
            .map(|e| e.manifest.digest().clone())
            .chain(extra_roots.iter().cloned())
            .collect();
        while let Some(digest) = stack.pop() {
            if digest.algorithm() != &DigestAlgorithm::Sha256
                || !seen.insert(digest.digest().to_string())
            {
                continue;
            }
            stack.extend(self.children(&digest)?);
        }
        for compressed in map.compressed_of(|hex| seen.contains(hex)) {
            seen.insert(compressed.digest().to_string());
        }
        Ok(seen)
    }

    /// The blobs a manifest or index names; nothing for other blobs. Media-type agnostic on
    /// purpose, so Docker manifests and manifest lists are followed too.
    fn children(&self, digest: &Digest) -> Result<Vec<Digest>, StoreError> {
        match self.blob_size(digest)? {
            Some(size) if size <= MAX_JSON_BLOB => {}
            _ => return Ok(Vec::new()),
        }
        let bytes = self.read_blob(digest)?;
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Ok(Vec::new());
        }
        #[derive(Deserialize)]
        struct Links {
            #[serde(default)]
            config: Option<Link>,
            #[serde(default)]
            layers: Vec<Link>,
            #[serde(default)]
            manifests: Vec<Link>,
        }
        #[derive(Deserialize)]
        struct Link {
            digest: Digest,
        }
        let Ok(links) = serde_json::from_slice::<Links>(&bytes) else {
            return Ok(Vec::new());
        };
        Ok(links
            .config
            .into_iter()
            .chain(links.layers)
            .chain(links.manifests)
            .map(|l| l.digest)
            .collect())
    }

    /// Blobs that no name and none of `extra_roots` reach, and leftover temporary files: what
    /// `prune` would delete (`img du`).
    pub fn reclaimable(&self, extra_roots: &[Digest]) -> Result<Garbage, StoreError> {
        self.reclaimable_with(extra_roots, &self.read_compressed_map()?)
    }

    fn reclaimable_with(
        &self,
        extra_roots: &[Digest],
        map: &CompressedMap,
    ) -> Result<Garbage, StoreError> {
        let reachable = self.reachable(extra_roots, map)?;
        let mut garbage = Garbage::default();
        let entries = fs::read_dir(&self.blobs).map_err(io_err("list", &self.blobs))?;
        for entry in entries {
            let entry = entry.map_err(io_err("list", &self.blobs))?;
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            let size = entry
                .metadata()
                .map_err(io_err("stat", &entry.path()))?
                .len();
            if file_name.starts_with(TMP_PREFIX) {
                garbage.temp_files.push(entry.path());
                garbage.bytes += size;
            } else if let Ok(digest) = format!("sha256:{file_name}").parse::<Digest>()
                && !reachable.contains(file_name)
            {
                garbage.blobs.push(Blob { digest, size });
                garbage.bytes += size;
            }
        }
        garbage
            .blobs
            .sort_by(|a, b| a.digest.digest().cmp(b.digest.digest()));
        garbage.temp_files.sort();
        Ok(garbage)
    }

    /// Deletes what `reclaimable` reports. Temporary files count as leftovers, so no other
    /// writer may be running: hold the state lock.
    pub fn prune(&self, extra_roots: &[Digest]) -> Result<Garbage, StoreError> {
        let map = self.read_compressed_map()?;
        let garbage = self.reclaimable_with(extra_roots, &map)?;
        self.delete(&garbage)?;
        self.forget_missing_compressed(map)?;
        Ok(garbage)
    }

    fn delete(&self, garbage: &Garbage) -> Result<(), StoreError> {
        let paths = garbage
            .blobs
            .iter()
            .map(|b| self.blob_path(&b.digest))
            .chain(garbage.temp_files.iter().cloned().map(Ok));
        for path in paths {
            let path = path?;
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &path)(e)),
            }
        }
        sync_dir(&self.blobs)
    }

    /// How many blobs the store holds and their total size (`img du`).
    pub fn usage(&self) -> Result<Usage, StoreError> {
        let mut usage = Usage::default();
        let entries = fs::read_dir(&self.blobs).map_err(io_err("list", &self.blobs))?;
        for entry in entries {
            let entry = entry.map_err(io_err("list", &self.blobs))?;
            usage.blobs += 1;
            usage.bytes += entry
                .metadata()
                .map_err(io_err("stat", &entry.path()))?
                .len();
        }
        Ok(usage)
    }
}

/// The media type a manifest blob declares, OCI image manifest when it declares none.
pub fn manifest_media_type(bytes: &[u8]) -> MediaType {
    #[derive(Deserialize)]
    struct Head {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Head>(bytes) {
        Ok(Head {
            media_type: Some(m),
            ..
        }) => MediaType::from(m.as_str()),
        Ok(Head {
            manifests: Some(_), ..
        }) => MediaType::ImageIndex,
        _ => MediaType::ImageManifest,
    }
}

/// Whether a descriptor names an index, for callers that pick a platform out of one.
pub(crate) fn descriptor_is_index(d: &Descriptor) -> bool {
    is_index(d.media_type())
}

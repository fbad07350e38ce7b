//! The image store: OCI blobs, manifests and configs under the state dir, names, archives, the state lock.
//!
//! Layout of the state dir as far as this module owns it:
//!
//! ```text
//! <state>/lock                 flock(2)ed by the one process that may write (StateLock)
//! <state>/blobs/sha256/<hex>   content-addressed blobs: layers, configs, manifests
//! <state>/blobs/sha256/.tmp-*  blobs being written; renamed to their digest when complete
//! <state>/images.json          names index: normalized reference -> manifest descriptor
//! <state>/compressed.json      uncompressed layer -> its gzip blob (`distribute`)
//! ```
//!
//! Layers' file trees live in snapshot backends keyed by chain ID ([`chain_id`]); this module only
//! knows their tar blobs.

mod archive;
mod config;
mod distribute;
mod lock;
mod platform;
mod reference;
mod store;

#[cfg(test)]
mod tests;

pub use archive::{
    ArchiveError, ArchiveFormat, DiffIdMismatch, ImportOptions, Loaded, import_rootfs, load, save,
};
pub use config::{ContainerConfig, Empty, HealthConfig, History, ImageConfig, RootFs, format_time};
pub use distribute::{Distribution, GZIP_LEVEL};
pub use lock::{Contention, LockError, StateLock};
pub use platform::{Platform, PlatformError, host_platform};
pub use reference::{Reference, ReferenceError};
pub use store::{
    Blob, BlobWriter, Garbage, Image, ImageStore, StoreError, Usage, manifest_media_type,
};

use oci_spec::image::{
    Descriptor, Digest, ImageManifest, ImageManifestBuilder, MediaType, Sha256Digest,
};
use sha2::{Digest as _, Sha256};

/// Docker's media types, accepted on load and when reading pulled content. img writes OCI ones.
pub mod docker_media_type {
    pub const MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
    pub const LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    pub const LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";
}

/// How a layer blob is compressed, from its media type (OCI or Docker).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression a layer media type names; `None` for media types that are not layers.
    pub fn of_layer(media_type: &MediaType) -> Option<Compression> {
        match media_type {
            MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => Some(Self::None),
            MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => {
                Some(Self::Gzip)
            }
            MediaType::ImageLayerZstd | MediaType::ImageLayerNonDistributableZstd => {
                Some(Self::Zstd)
            }
            MediaType::Other(s) => match s.as_str() {
                docker_media_type::LAYER_TAR => Some(Self::None),
                docker_media_type::LAYER_GZIP => Some(Self::Gzip),
                docker_media_type::LAYER_ZSTD => Some(Self::Zstd),
                // Docker's foreign (Windows) layers are gzipped tars too.
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some(Self::Gzip),
                _ => None,
            },
            _ => None,
        }
    }

    /// Recognizes a layer's compression from its first bytes (docker-archives carry no media types).
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Self::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Self::Zstd
        } else {
            Self::None
        }
    }

    /// The OCI layer media type for this compression.
    pub fn oci_layer_media_type(self) -> MediaType {
        match self {
            Self::None => MediaType::ImageLayer,
            Self::Gzip => MediaType::ImageLayerGzip,
            Self::Zstd => MediaType::ImageLayerZstd,
        }
    }
}

/// Whether a media type names an image manifest (OCI or Docker schema 2).
pub fn is_manifest(media_type: &MediaType) -> bool {
    match media_type {
        MediaType::ImageManifest => true,
        MediaType::Other(s) => s == docker_media_type::MANIFEST,
        _ => false,
    }
}

/// Whether a media type names an index of manifests (OCI index or Docker manifest list).
pub fn is_index(media_type: &MediaType) -> bool {
    match media_type {
        MediaType::ImageIndex => true,
        MediaType::Other(s) => s == docker_media_type::MANIFEST_LIST,
        _ => false,
    }
}

/// The largest manifest, index or image config img reads, pulled or loaded: containerd's
/// limit. They are read whole into memory, so a registry or archive that sends more is refused
/// before it is read, not after.
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;

/// Refuses a manifest or index document that could be read as the other kind: one with both
/// `manifests` and `config` or `layers` (CVE-2021-41190, where two clients saw two images under
/// one digest), or whose own `mediaType` says the other kind. `bytes` must be JSON.
pub fn check_unambiguous(bytes: &[u8]) -> Result<(), String> {
    #[derive(serde::Deserialize)]
    struct Shape {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        config: Option<serde_json::Value>,
        layers: Option<serde_json::Value>,
    }
    let shape: Shape = serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?;
    let index_fields = shape.manifests.is_some();
    let manifest_fields = shape.config.is_some() || shape.layers.is_some();
    if index_fields && manifest_fields {
        return Err(
            "ambiguous manifest: it has both `manifests` and `config` or `layers` \
                    (CVE-2021-41190)"
                .to_string(),
        );
    }
    let declared = shape.media_type.map(|m| MediaType::from(m.as_str()));
    match declared {
        Some(m) if is_manifest(&m) && index_fields => Err(format!(
            "ambiguous manifest: its media type is {m} but it has `manifests` (CVE-2021-41190)"
        )),
        Some(m) if is_index(&m) && manifest_fields => Err(format!(
            "ambiguous manifest: its media type is {m} but it has `config` or `layers` \
             (CVE-2021-41190)"
        )),
        _ => Ok(()),
    }
}

/// An OCI image manifest for `config` and `layers`, as img writes them.
pub fn image_manifest(config: Descriptor, layers: Vec<Descriptor>) -> ImageManifest {
    ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config)
        .layers(layers)
        .build()
        .expect("every required manifest field is set")
}

/// The sha256 digest of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> Digest {
    digest_from_hasher(Sha256::new_with_prefix(bytes))
}

pub(crate) fn digest_from_hasher(hasher: Sha256) -> Digest {
    let hex = hex::encode(hasher.finalize());
    hex.parse::<Sha256Digest>()
        .expect("a sha256 hex string is a valid sha256 digest")
        .into()
}

/// The chain ID of a stack of layers given their diff IDs, bottom first: the key snapshot backends
/// store the stack's file tree under. `ChainID(L0) = DiffID(L0)`,
/// `ChainID(L0..Ln) = sha256(ChainID(L0..Ln-1) + " " + DiffID(Ln))` (OCI image spec, config.md).
/// `None` for an empty stack.
pub fn chain_id(diff_ids: &[Digest]) -> Option<Digest> {
    chain_ids(diff_ids).pop()
}

/// The chain IDs of every prefix of a stack of layers: entry `i` names layers `0..=i`.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match out.last() {
            None => diff_id.clone(),
            Some(parent) => sha256_digest(format!("{parent} {diff_id}").as_bytes()),
        };
        out.push(next);
    }
    out
}

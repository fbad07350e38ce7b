//! The registry client: `img pull`, `img push`, `img login` and `img logout` against OCI
//! distribution registries. This is the only module that talks to the network.
//!
//! It speaks the distribution protocol itself over reqwest (`http`: manifests, blob streams,
//! uploads, cross-repository mounts, with basic auth or bearer tokens from `token`), and adds
//! streaming blobs into the [`ImageStore`](crate::image::ImageStore) with digest and size
//! checks, manifests and configs capped at 4 MiB and refused when they read two ways,
//! resuming an interrupted download with a Range request, bounded retries (429 and 5xx by
//! status, waiting as `Retry-After` asks, up to a minute; backoff otherwise), Docker's
//! credentials (`~/.docker/config.json`), plain HTTP for loopback and `--insecure-registry`
//! hosts, the platform choice in image indexes, and progress output. HTTPS is verified by reqwest's
//! rustls-platform-verifier, which on Linux reads rustls-native-certs: the system store, or
//! `SSL_CERT_FILE`/`SSL_CERT_DIR` instead when set; a TLS failure is reported at once, not
//! retried. It runs its own tokio runtime, so the rest of img stays synchronous.
//!
//! What is stored after a pull: the platform's image manifest (exact bytes, so its digest is the
//! registry's), its config and its layers, and the name pointing at that manifest. An image index
//! is not stored yet: `img ls` shows the platform manifest's digest, as `docker images --digests`
//! did before Docker's containerd store, and `NAME@<index digest>` does not resolve after the
//! pull (the image store would resolve it to the stored platform manifest once the index blob is
//! stored; see the ignored test in builder/tests/it/registry.rs).

mod apply;
mod auth;
mod client;
mod http;
mod progress;
mod pull;
mod push;
mod sources;
mod token;

#[cfg(test)]
mod tests;

pub use auth::{Credentials, docker_config_path, login, logout};
pub use client::{Options, Registry, is_insecure_host, registry_key};
pub use progress::{BlobEvent, Reporter};
pub use pull::{Pulled, select_platform};
pub use push::Pushed;
pub use sources::BlobSources;

use std::path::PathBuf;

/// What a registry operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("failed to start the registry client's runtime: {0}")]
    Runtime(std::io::Error),
    #[error("failed to set up the HTTP client: {0}")]
    Http(String),
    #[error(
        "{registry} refused the credentials for {what} (wrong username or password, or no access); \
         run `img login {registry}`"
    )]
    Unauthorized { registry: String, what: String },
    /// The registry's token server refused the credentials; `message` is what it said.
    #[error("{registry} refused the credentials for {what}: {message}; run `img login {registry}`")]
    TokenRefused {
        registry: String,
        what: String,
        message: String,
    },
    #[error("{what}: {message}")]
    Request { what: String, message: String },
    #[error("TLS with {registry} failed: {message}{hint}")]
    Tls {
        registry: String,
        message: String,
        /// What to do about it, for certificate problems (empty otherwise).
        hint: &'static str,
    },
    #[error("{what}: gave up after {attempts} attempts: {message}")]
    Exhausted {
        what: String,
        attempts: u32,
        message: String,
    },
    #[error("{what} not found in {registry}")]
    NotFound { registry: String, what: String },
    #[error("blob {digest} hashes to {actual} (a corrupt or wrong download)")]
    DigestMismatch { digest: String, actual: String },
    #[error("blob {digest}: the registry sent Docker-Content-Digest {header}")]
    HeaderDigestMismatch { digest: String, header: String },
    #[error("blob {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error("manifest of {reference}: {message}")]
    BadManifest { reference: String, message: String },
    #[error("{reference} has no image for platform {platform} (it has: {available})")]
    NoPlatform {
        reference: String,
        platform: String,
        available: String,
    },
    #[error("layer {digest} has media type {media_type}, which img cannot apply")]
    UnsupportedLayer { digest: String, media_type: String },
    #[error("docker config {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("credentials for {registry}: {message}")]
    Credentials { registry: String, message: String },
    #[error(transparent)]
    Store(#[from] crate::image::StoreError),
    #[error(transparent)]
    Reference(#[from] crate::image::ReferenceError),
    #[error("failed to apply the pulled layers of {reference}: {message}")]
    Apply { reference: String, message: String },
    #[error("{}", io_text(path, source))]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `RegistryError::Io`'s message: what was being written when the disk is full.
fn io_text(path: &std::path::Path, source: &std::io::Error) -> String {
    if imgfs::space::is_no_space(source) {
        imgfs::space::io_message("write", &path.display(), source)
    } else {
        format!("i/o error on {}: {source}", path.display())
    }
}

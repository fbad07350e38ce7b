//! `Registry::pull`: manifest (through an index to one platform), then config and layers
//! streamed into the image store, each checked against its digest and size, then the layers
//! applied to a snapshot backend, and only then the name.
//!
//! Order matters for failures: a blob reaches the store only once it hashes to its digest, and
//! the name is written last, so a pull that fails leaves no image and no partial blob (blobs
//! already complete stay, unnamed, for the next try or `img prune`).

use std::io::Write;

use futures_util::{StreamExt, TryStreamExt};
use oci_spec::image::{Descriptor, Digest, ImageIndex, ImageManifest};
use reqwest::{Method, StatusCode};

use super::RegistryError;
use super::apply::{Arrival, apply_as_they_come, remove_created};
use super::client::{Connection, Failure, Registry, error_chain};
use super::http::{Access, ReadError, Request, read_capped, transport_failure};
use super::progress::BlobEvent;
use super::sources::BlobSources;
use crate::image::{
    BlobWriter, Compression, Image, ImageConfig, ImageStore, MAX_MANIFEST_SIZE, Platform,
    Reference, check_unambiguous, docker_media_type, is_index, is_manifest, sha256_digest,
};

/// The header a registry names a manifest's or blob's digest in.
const CONTENT_DIGEST: &str = "Docker-Content-Digest";
use imgfs::Snapshotter;

/// The media types img accepts for a manifest, most preferred first.
const ACCEPTED_MANIFESTS: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    docker_media_type::MANIFEST_LIST,
    "application/vnd.oci.image.manifest.v1+json",
    docker_media_type::MANIFEST,
];

/// The manifest of `index` for `platform`: the first entry that matches, preferring entries
/// without a variant when none is asked for (the index order is the registry's preference).
pub fn select_platform(index: &ImageIndex, platform: &Platform) -> Option<Descriptor> {
    let candidates: Vec<&Descriptor> = index
        .manifests()
        .iter()
        .filter(|d| d.platform().as_ref().is_some_and(|p| platform.matches(p)))
        .collect();
    candidates
        .iter()
        .find(|d| platform.variant.is_some() || d.platform().as_ref().unwrap().variant().is_none())
        .or(candidates.first())
        .map(|d| (*d).clone())
}

/// What a pull stored.
#[derive(Debug)]
pub struct Pulled {
    pub image: Image,
    /// The snapshot holding the image's file tree (its top layer's chain ID), when a backend was
    /// given and the image has layers.
    pub snapshot: Option<String>,
    /// Bytes downloaded (blobs already in the store are not downloaded again).
    pub downloaded: u64,
}

impl Registry {
    /// Parses `name` and sets up the client for its registry (TLS roots, credentials), which a
    /// pull or push of it then reuses: lets a caller do that while it does something else.
    pub fn connect(&self, name: &str) -> Result<(), RegistryError> {
        self.connection(&Reference::parse(name)?).map(|_| ())
    }

    /// Pulls `name` into `store`, applies its layers to `backend` when given, and then names it
    /// (when `name` has a tag; a digest-only reference is stored unnamed).
    pub fn pull(
        &self,
        store: &ImageStore,
        name: &str,
        backend: Option<&dyn Snapshotter>,
    ) -> Result<Pulled, RegistryError> {
        let reference = Reference::parse(name)?;
        let conn = self.connection(&reference)?;
        let (manifest_bytes, manifest_digest, manifest, index) =
            self.block_on(self.pull_manifest(&conn, &reference))?;

        // The config is read whole, as a manifest is: the same cap, before it is downloaded.
        if manifest.config().size() > MAX_MANIFEST_SIZE {
            return Err(RegistryError::BadManifest {
                reference: reference.to_string(),
                message: format!(
                    "its config is {} bytes, over the {} MiB limit",
                    manifest.config().size(),
                    MAX_MANIFEST_SIZE >> 20
                ),
            });
        }
        let mut wanted: Vec<&Descriptor> = vec![manifest.config()];
        for layer in manifest.layers() {
            match Compression::of_layer(layer.media_type()) {
                Some(Compression::None | Compression::Gzip | Compression::Zstd) => {}
                _ => {
                    return Err(RegistryError::UnsupportedLayer {
                        digest: layer.digest().to_string(),
                        media_type: layer.media_type().to_string(),
                    });
                }
            }
            wanted.push(layer);
        }
        let mut missing = Vec::new();
        for d in wanted {
            if store.has_blob(d.digest())? {
                self.reporter
                    .blob(d.digest().as_ref(), d.size())
                    .finish(&BlobEvent::Present);
            } else if !missing
                .iter()
                .any(|m: &&Descriptor| m.digest() == d.digest())
            {
                missing.push(d);
            }
        }
        let started = std::time::Instant::now();
        // The config first: its diff IDs are what the layers are applied against.
        let mut downloaded = 0;
        if let Some(pos) = missing
            .iter()
            .position(|d| d.digest() == manifest.config().digest())
        {
            let config = missing.remove(pos);
            // Nobody reads the config while it arrives.
            let arrival = Arrival::default();
            downloaded +=
                self.block_on(self.fetch_blob(&conn, &reference, store, config, &arrival))?;
        }
        let config: ImageConfig = store.read_json(manifest.config().digest())?;
        if config.rootfs.diff_ids.len() != manifest.layers().len() {
            return Err(RegistryError::BadManifest {
                reference: reference.to_string(),
                message: format!(
                    "{} layers but the config lists {} diff ids",
                    manifest.layers().len(),
                    config.rootfs.diff_ids.len()
                ),
            });
        }

        // A thread applies each layer as soon as the layers below it are applied, reading it
        // while it downloads (`Arrival`), so the apply finishes with the download instead of
        // starting after it. Then layers download one at a time, in manifest order: the apply
        // keeps pace with a single download, and a second one in parallel only takes CPU from
        // the apply of the first, which is what the pull waits for (bench/registry-compare.sh on
        // two busy cores, median img pull: 0.81 and 0.90 s one at a time, 0.96 s two, 0.93 s
        // three). Without an apply, they download `concurrency` at a time.
        let downloads = if backend.is_some() {
            1
        } else {
            self.options.concurrency.max(1)
        };
        let arrivals: std::collections::HashMap<String, Arrival> = missing
            .iter()
            .map(|d| (d.digest().to_string(), Arrival::default()))
            .collect();
        let (fetched, applied) = std::thread::scope(|s| {
            let applier = backend.map(|b| {
                let layers: Vec<Descriptor> = manifest.layers().to_vec();
                let diff_ids = config.rootfs.diff_ids.clone();
                let arrivals = &arrivals;
                s.spawn(move || apply_as_they_come(b, store, &layers, &diff_ids, arrivals))
            });
            let (conn, reference, arrivals) = (&conn, &reference, &arrivals);
            let fetched: Result<u64, RegistryError> = self.block_on(async {
                futures_util::stream::iter(missing.iter().map(|d| async move {
                    let arrival = &arrivals[d.digest().as_ref()];
                    let fetched = self.fetch_blob(conn, reference, store, d, arrival).await;
                    arrival.end(
                        fetched
                            .as_ref()
                            .map(|_| d.size())
                            .map_err(|e| e.to_string()),
                    );
                    fetched
                }))
                .buffer_unordered(downloads)
                .try_fold(0u64, |sum, n| async move { Ok(sum + n) })
                .await
            });
            // Downloads the first failure cancelled never ended by themselves.
            for arrival in arrivals.values() {
                arrival.end(Err(
                    "the pull stopped before this blob was downloaded".to_string()
                ));
            }
            let applied = applier.map(|a| a.join().expect("the applier does not panic"));
            (fetched, applied)
        });
        let applied = match (fetched, applied) {
            (Ok(n), applied) => {
                downloaded += n;
                applied
            }
            (Err(e), Some(Ok(applied))) => {
                // No orphan snapshots from a pull that failed.
                remove_created(backend, &applied.created);
                return Err(e);
            }
            // The applier removed what it made when it saw the downloads stop.
            (Err(e), _) => return Err(e),
        };
        tracing::debug!(%reference, downloaded, elapsed = ?started.elapsed(), "blobs fetched");
        // The exact bytes the registry sent, so the stored digest is the registry's.
        store.put_blob(&manifest_bytes[..], Some(&manifest_digest))?;
        // The index too, so `NAME@<index digest>` resolves to this manifest afterwards.
        if let Some((index_bytes, index_digest)) = &index {
            store.put_blob(&index_bytes[..], Some(index_digest))?;
        }
        let image = store.resolve(&format!("{}@{manifest_digest}", reference.name()))?;

        let snapshot = match applied {
            Some(Ok(applied)) => applied.top,
            Some(Err(message)) => {
                return Err(RegistryError::Apply {
                    reference: reference.to_string(),
                    message,
                });
            }
            None => None,
        };
        tracing::debug!(%reference, elapsed = ?started.elapsed(), "layers applied");
        let image = match reference.tag() {
            Some(tag) => {
                let named = reference.with_tag(tag);
                store.tag(&named, &image.manifest_descriptor)?;
                store.resolve(&named.to_string())?
            }
            None => image,
        };

        let mut sources = BlobSources::open(store.state_dir());
        sources.record(
            reference.registry(),
            reference.repository(),
            std::iter::once(image.manifest.config())
                .chain(image.manifest.layers())
                .map(|d| d.digest().as_ref()),
        );
        // The record is a hint for later pushes: failing to write it must not fail the pull.
        if let Err(e) = sources.save() {
            tracing::warn!("failed to record where blobs came from: {e}");
        }
        Ok(Pulled {
            image,
            snapshot,
            downloaded,
        })
    }

    /// The image manifest of `reference` (through an index if it names one): its exact bytes,
    /// digest and parsed form, and the index's bytes and digest when there was one.
    #[allow(clippy::type_complexity)]
    async fn pull_manifest(
        &self,
        conn: &Connection,
        reference: &Reference,
    ) -> Result<(Vec<u8>, Digest, ImageManifest, Option<(Vec<u8>, Digest)>), RegistryError> {
        let what = format!("manifest of {reference}");
        let target = match (reference.digest(), reference.tag()) {
            (Some(d), _) => d.to_string(),
            (None, tag) => tag.unwrap_or("latest").to_string(),
        };
        let (bytes, digest) = self
            .fetch_manifest(conn, reference, &target, &what, reference.digest(), None)
            .await?;
        let media_type = crate::image::manifest_media_type(&bytes);
        let mut fetched_index = None;
        let (bytes, digest) = if is_index(&media_type) {
            let index: ImageIndex =
                serde_json::from_slice(&bytes).map_err(|e| RegistryError::BadManifest {
                    reference: reference.to_string(),
                    message: format!("invalid image index: {e}"),
                })?;
            let platform = self.options.platform.clone().unwrap_or_else(Platform::host);
            let chosen =
                select_platform(&index, &platform).ok_or_else(|| RegistryError::NoPlatform {
                    reference: reference.to_string(),
                    platform: platform.to_string(),
                    available: available_platforms(&index),
                })?;
            let what = format!("manifest of {reference} for {platform}");
            let chosen = self
                .fetch_manifest(
                    conn,
                    reference,
                    chosen.digest().as_ref(),
                    &what,
                    Some(chosen.digest().clone()),
                    Some(chosen.size()),
                )
                .await?;
            fetched_index = Some((bytes, digest));
            chosen
        } else {
            (bytes, digest)
        };
        if !is_manifest(&crate::image::manifest_media_type(&bytes)) {
            return Err(RegistryError::BadManifest {
                reference: reference.to_string(),
                message: "not an image manifest".to_string(),
            });
        }
        let manifest: ImageManifest =
            serde_json::from_slice(&bytes).map_err(|e| RegistryError::BadManifest {
                reference: reference.to_string(),
                message: e.to_string(),
            })?;
        Ok((bytes, digest, manifest, fetched_index))
    }

    /// One manifest of `reference`'s repository by tag or digest (`target`), its digest
    /// checked against its bytes, the registry's header and `expected`, its size against the
    /// cap and `expected_size` (an index's word for it), and refused when it reads two ways.
    async fn fetch_manifest(
        &self,
        conn: &Connection,
        reference: &Reference,
        target: &str,
        what: &str,
        expected: Option<Digest>,
        expected_size: Option<u64>,
    ) -> Result<(Vec<u8>, Digest), RegistryError> {
        let shown = match target.contains(':') {
            true => format!("{}@{target}", reference.name()),
            false => format!("{}:{target}", reference.name()),
        };
        let bad = |message: String| RegistryError::BadManifest {
            reference: shown.clone(),
            message,
        };
        let url = format!(
            "{}/v2/{}/manifests/{target}",
            conn.base,
            reference.repository()
        );
        let request = Request {
            conn,
            what,
            repository: reference.repository(),
            access: Access::Pull,
        };
        let (bytes, header) = self
            .retry(what, || async {
                let response = self
                    .send(&request, Method::GET, &url, |b| {
                        b.header(reqwest::header::ACCEPT, ACCEPTED_MANIFESTS.join(", "))
                    })
                    .await?;
                let header = response
                    .headers()
                    .get(CONTENT_DIGEST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string);
                match read_capped(response, MAX_MANIFEST_SIZE).await {
                    Ok(bytes) => Ok((bytes, header)),
                    Err(ReadError::TooLong(n)) => Err(Failure::Fatal(bad(format!(
                        "it is {n} bytes or more, over the {} MiB limit",
                        MAX_MANIFEST_SIZE >> 20
                    )))),
                    Err(ReadError::Transport(e)) => Err(transport_failure(&conn.registry, &e)),
                }
            })
            .await?;
        let actual = sha256_digest(&bytes);
        if let Some(header) = header
            && header != actual.to_string()
        {
            return Err(bad(format!(
                "the registry says its digest is {header}, but it hashes to {actual}"
            )));
        }
        if let Some(expected) = expected
            && expected != actual
        {
            return Err(bad(format!("expected digest {expected}, got {actual}")));
        }
        if let Some(size) = expected_size
            && size != bytes.len() as u64
        {
            return Err(bad(format!(
                "the index says it is {size} bytes, the registry sent {}",
                bytes.len()
            )));
        }
        check_unambiguous(&bytes).map_err(bad)?;
        Ok((bytes, actual))
    }

    /// Streams one blob into the store, resuming with a Range request after a dropped
    /// connection. Returns the bytes downloaded.
    async fn fetch_blob(
        &self,
        conn: &Connection,
        reference: &Reference,
        store: &ImageStore,
        desc: &Descriptor,
        arrival: &Arrival,
    ) -> Result<u64, RegistryError> {
        let digest = desc.digest().to_string();
        let what = format!("blob {digest} of {}", reference.name());
        let progress = self.reporter.blob(&digest, desc.size());
        let mut download = Download {
            writer: store.blob_writer()?,
            written: 0,
            received: 0,
            arrival,
        };
        download.restarted();
        let mut retrier = self.retrier(&what);
        loop {
            let before = download.received;
            match self
                .transfer(conn, reference, store, desc, &mut download, &progress)
                .await
            {
                Ok(()) => break,
                Err(failure) => {
                    // A try that moved the download forward does not count against the budget:
                    // a long blob over a flaky link still finishes.
                    if download.received > before {
                        retrier = self.retrier(&what);
                    }
                    retrier.failed(failure).await?;
                }
            }
        }
        if download.written != desc.size() {
            return Err(RegistryError::SizeMismatch {
                digest,
                expected: desc.size(),
                actual: download.written,
            });
        }
        download
            .writer
            .commit(Some(desc.digest()))
            .map_err(|e| match e {
                crate::image::StoreError::DigestMismatch { actual, .. } => {
                    RegistryError::DigestMismatch {
                        digest: digest.clone(),
                        actual: actual.to_string(),
                    }
                }
                other => other.into(),
            })?;
        progress.finish(&BlobEvent::Pulled);
        tracing::debug!(%digest, "blob stored");
        Ok(download.received)
    }

    /// One request for the rest of a blob (from `download.written` on).
    async fn transfer(
        &self,
        conn: &Connection,
        reference: &Reference,
        store: &ImageStore,
        desc: &Descriptor,
        download: &mut Download<'_>,
        progress: &super::progress::BlobProgress,
    ) -> Result<(), Failure> {
        let digest = desc.digest().to_string();
        let what = format!("blob {digest}");
        // Every byte came before the connection broke: nothing is left to ask for.
        if download.written > 0 && download.written == desc.size() {
            return Ok(());
        }
        let url = format!("{}/v2/{}/blobs/{digest}", conn.base, reference.repository());
        let request = Request {
            conn,
            what: &what,
            repository: reference.repository(),
            access: Access::Pull,
        };
        let from = download.written;
        let response = self
            .send(&request, Method::GET, &url, |b| match from {
                0 => b,
                n => b.header(reqwest::header::RANGE, format!("bytes={n}-")),
            })
            .await?;
        if response.status() != StatusCode::PARTIAL_CONTENT && download.written > 0 {
            // The registry ignored the Range header: start over.
            download.writer = store.blob_writer().map_err(RegistryError::from)?;
            download.written = 0;
            download.restarted();
            progress.set_position(0);
        }
        if let Some(header) = response
            .headers()
            .get(CONTENT_DIGEST)
            .and_then(|h| h.to_str().ok())
            && header != digest
        {
            return Err(Failure::Fatal(RegistryError::HeaderDigestMismatch {
                digest,
                header: header.to_string(),
            }));
        }
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Failure::Transient(error_chain(&e)))?;
            let len = chunk.len() as u64;
            if download.written + len > desc.size() {
                return Err(Failure::Fatal(RegistryError::SizeMismatch {
                    digest,
                    expected: desc.size(),
                    actual: download.written + len,
                }));
            }
            download.writer.write_all(&chunk).map_err(|source| {
                Failure::Fatal(RegistryError::Io {
                    path: store.state_dir().join("blobs").join(&digest),
                    source,
                })
            })?;
            download.written += len;
            download.received += len;
            download.arrival.flushed(download.writer.flushed());
            progress.advance(len);
        }
        Ok(())
    }
}

/// A blob being downloaded.
struct Download<'a> {
    writer: BlobWriter,
    /// Bytes in `writer`.
    written: u64,
    /// Bytes received over all tries (more than `written` after a restart).
    received: u64,
    /// Where the applier follows the download.
    arrival: &'a Arrival,
}

impl Download<'_> {
    /// Tells the applier the blob now starts over in a new file of `writer`.
    fn restarted(&self) {
        // Without a second handle nobody can follow this file; the applier then waits for the
        // stored blob.
        self.arrival.restart(self.writer.reopen().ok());
    }
}

fn available_platforms(index: &ImageIndex) -> String {
    let names: Vec<String> = index
        .manifests()
        .iter()
        .filter_map(|d| d.platform().as_ref())
        .map(|p| {
            let mut s = format!("{}/{}", p.os(), p.architecture());
            if let Some(v) = p.variant() {
                s.push('/');
                s.push_str(v);
            }
            s
        })
        .collect();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

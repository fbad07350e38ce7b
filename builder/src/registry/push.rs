//! `Registry::push`: config and layers uploaded only where the registry lacks them (HEAD first,
//! then a cross-repository mount when another repository of the registry is known to hold the
//! blob, then an upload streamed from the store), several at once, then the manifest with the
//! exact bytes img stored, so the pushed digest is the local one.

use futures_util::{StreamExt, TryStreamExt};
use oci_client::errors::OciDistributionError;
use oci_spec::image::{Descriptor, Digest};

use super::RegistryError;
use super::client::{
    Connection, Failure, Registry, classify, error_chain, oci_reference, tls_failure,
};
use super::progress::BlobEvent;
use super::sources::BlobSources;
use super::token::Challenge;
use crate::image::{ImageStore, Reference};

/// What a push did.
#[derive(Debug)]
pub struct Pushed {
    pub reference: Reference,
    /// The manifest digest, the same in the registry as in the local store.
    pub digest: Digest,
    /// Each blob and what happened to it.
    pub blobs: Vec<(Digest, BlobEvent)>,
    /// Bytes uploaded (existing and mounted blobs are not).
    pub uploaded: u64,
}

impl Registry {
    /// Pushes the local image `local` as `target` (default: the same name).
    pub fn push(
        &self,
        store: &ImageStore,
        local: &str,
        target: Option<&str>,
    ) -> Result<Pushed, RegistryError> {
        let image = store.resolve(local)?;
        let reference = match target {
            Some(t) => Reference::parse(t)?,
            None => image.name.clone(),
        };
        if reference.tag().is_none() {
            return Err(RegistryError::Request {
                what: format!("push {reference}"),
                message: "a push needs a tag, not only a digest".to_string(),
            });
        }
        let reference = reference.with_tag(reference.tag().expect("checked above"));
        let conn = self.connection(&reference)?;
        let manifest_bytes = store.read_blob(&image.manifest_digest)?;
        let sources = BlobSources::open(store.state_dir());

        let mut blobs: Vec<&Descriptor> = Vec::new();
        for d in std::iter::once(image.manifest.config()).chain(image.manifest.layers()) {
            if !blobs.iter().any(|b| b.digest() == d.digest()) {
                blobs.push(d);
            }
        }
        let oref = oci_reference(&reference);
        let results: Vec<(Digest, BlobEvent, u64)> = self.block_on(async {
            let pushed = futures_util::stream::iter(
                blobs
                    .iter()
                    .map(|d| self.push_blob(&conn, &reference, &oref, store, &sources, d)),
            )
            .buffer_unordered(self.options.concurrency.max(1))
            .try_collect()
            .await;
            match pushed {
                Ok(results) => Ok(results),
                Err(e) => Err(self
                    .explain(&conn, reference.repository(), "pull,push", e)
                    .await),
            }
        })?;

        let content_type = image.manifest_descriptor.media_type().to_string();
        let what = format!("manifest of {reference}");
        self.block_on(self.retry(&what, || async {
            let header = reqwest::header::HeaderValue::from_str(&content_type).map_err(|e| {
                RegistryError::Request {
                    what: what.clone(),
                    message: format!("media type {content_type:?}: {e}"),
                }
            })?;
            conn.client
                .push_manifest_raw(&oref, manifest_bytes.clone(), header)
                .await
                .map_err(|e| classify(&conn.registry, &what, e))
        }))?;

        let mut sources = sources;
        sources.record(
            reference.registry(),
            reference.repository(),
            blobs.iter().map(|d| d.digest().as_ref()),
        );
        if let Err(e) = sources.save() {
            tracing::warn!("failed to record where blobs were pushed: {e}");
        }
        let uploaded = results.iter().map(|(_, _, n)| n).sum();
        Ok(Pushed {
            reference,
            digest: image.manifest_digest.clone(),
            blobs: results.into_iter().map(|(d, e, _)| (d, e)).collect(),
            uploaded,
        })
    }

    /// Makes sure the target repository has one blob. Returns what it took and the bytes sent.
    async fn push_blob(
        &self,
        conn: &Connection,
        reference: &Reference,
        oref: &oci_client::Reference,
        store: &ImageStore,
        sources: &BlobSources,
        desc: &Descriptor,
    ) -> Result<(Digest, BlobEvent, u64), RegistryError> {
        let digest = desc.digest().to_string();
        let what = format!("blob {digest} of {}", reference.name());
        let progress = self.reporter.blob(&digest, desc.size());
        let done = |event: BlobEvent, sent: u64| Ok((desc.digest().clone(), event, sent));

        let exists = self
            .retry(&what, || async {
                conn.client
                    .blob_exists(oref, &digest)
                    .await
                    .map_err(|e| classify(&conn.registry, &what, e))
            })
            .await?;
        if exists {
            progress.finish(&BlobEvent::Exists);
            return done(BlobEvent::Exists, 0);
        }

        for repo in sources.candidates(reference.registry(), reference.repository(), &digest) {
            // A refused mount (202, or the blob gone from that repository) costs a request or
            // two; the upload below follows.
            match self.mount(conn, reference, oref, &repo, &digest).await {
                Ok(true) => {
                    let event = BlobEvent::Mounted {
                        from: format!("{}/{repo}", reference.registry()),
                    };
                    progress.finish(&event);
                    return done(event, 0);
                }
                Ok(false) => tracing::debug!(%digest, from = %repo, "mount refused"),
                Err(e) => tracing::debug!(%digest, from = %repo, "mount refused: {e}"),
            }
        }

        let path = store.blob_path(desc.digest())?;
        let size = desc.size();
        self.retry(&what, || async {
            progress.set_position(0);
            let file = tokio::fs::File::open(&path)
                .await
                .map_err(|source| RegistryError::Io {
                    path: path.clone(),
                    source,
                })?;
            let count = progress.counter();
            let body = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20)
                .inspect(move |chunk| {
                    if let Ok(c) = chunk {
                        count(c.len() as u64);
                    }
                })
                .map_err(OciDistributionError::IoError);
            conn.client
                .push_blob_stream(oref, body, &digest, Some(size))
                .await
                .map_err(|e| classify(&conn.registry, &what, e))
        })
        .await?;
        progress.finish(&BlobEvent::Pushed);
        done(BlobEvent::Pushed, size)
    }

    /// Mounts `digest` from `repo` into `reference`'s repository; `Ok(false)` when the registry
    /// declined. oci-client's mount request goes first: it is all an open or basic-auth
    /// registry needs, so a mount there is that one request, as before. Its token grants only
    /// the target repository, though, and a token registry answers it with a plain upload
    /// (which is left to expire), so once a mount is refused the registry's challenge is asked
    /// for (`GET /v2/`, once per push); on a token registry this and every later mount of the
    /// push is sent with a token that also grants pull on the source, as Docker asks for.
    /// Asking for the challenge first instead would cost open and basic-auth registries a
    /// request on every push that can mount.
    async fn mount(
        &self,
        conn: &Connection,
        reference: &Reference,
        oref: &oci_client::Reference,
        repo: &str,
        digest: &str,
    ) -> Result<bool, RegistryError> {
        let challenge = match conn.bearer.get().cloned() {
            Some(Some(challenge)) => challenge,
            known => {
                let source = oci_client::Reference::with_tag(
                    reference.registry().to_string(),
                    repo.to_string(),
                    "latest".to_string(),
                );
                match conn.client.mount_blob(oref, &source, digest).await {
                    Ok(()) => return Ok(true),
                    Err(e) => tracing::debug!(%digest, from = %repo, "mount refused: {e}"),
                }
                if known.is_some() {
                    return Ok(false);
                }
                match self.bearer_challenge(conn).await? {
                    Some(challenge) => challenge,
                    None => return Ok(false),
                }
            }
        };
        self.mount_with_token(conn, &challenge, reference, repo, digest)
            .await
    }

    /// The mount request with a token for both repositories, retried like every request.
    async fn mount_with_token(
        &self,
        conn: &Connection,
        challenge: &Challenge,
        reference: &Reference,
        repo: &str,
        digest: &str,
    ) -> Result<bool, RegistryError> {
        let target = reference.repository();
        let scopes = [
            format!("repository:{target}:pull,push"),
            format!("repository:{repo}:pull"),
        ];
        let url = format!("{}/v2/{target}/blobs/uploads/", conn.base);
        let what = format!(
            "mount of blob {digest} from {repo} into {}",
            reference.name()
        );
        self.retry(&what, || async {
            let token = self.token(conn, challenge, &scopes).await?;
            let response = conn
                .http
                .post(&url)
                .query(&[("mount", digest), ("from", repo)])
                .bearer_auth(&token)
                .header(reqwest::header::CONTENT_LENGTH, "0")
                .send()
                .await
                .map_err(|e| match tls_failure(&conn.registry, &e) {
                    Some(tls) => Failure::Fatal(tls),
                    None => Failure::Transient(error_chain(&e)),
                })?;
            match response.status().as_u16() {
                201 => Ok(true),
                408 | 429 | 500..=599 => {
                    Err(Failure::Transient(format!("HTTP {}", response.status())))
                }
                // 202: the registry started a plain upload instead (the token did not grant
                // the source, or the blob is not there); it is left to expire. 401, 403, 404:
                // the upload that follows reports what is wrong, if anything.
                status => {
                    tracing::debug!(%digest, from = %repo, status, "mount declined");
                    Ok(false)
                }
            }
        })
        .await
    }
}

//! `Registry::push`: config and layers uploaded only where the registry lacks them (HEAD first,
//! then a cross-repository mount when another repository of the registry is known to hold the
//! blob, then an upload streamed from the store), several at once, then the manifest. What is
//! pushed is the image's `distribution`: layers a build stored uncompressed go gzip-compressed,
//! the same bytes at every push; an image whose layers are all compressed already (a pulled
//! one) goes with the exact manifest bytes img stored, so its pushed digest is the local one.

use futures_util::{StreamExt, TryStreamExt};
use oci_spec::image::{Descriptor, Digest};
use reqwest::Method;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};

use super::RegistryError;
use super::client::{Connection, Failure, Registry, error_chain, tls_failure};
use super::http::{Access, Request, status_failure};
use super::progress::BlobEvent;
use super::sources::BlobSources;
use super::token::Challenge;
use crate::image::{ImageStore, Reference};

/// What a push did.
#[derive(Debug)]
pub struct Pushed {
    pub reference: Reference,
    /// The pushed manifest's digest: the local one unless layers were compressed for the push
    /// (then the same at every push of the image).
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
            None => image.name.clone().ok_or_else(|| RegistryError::Request {
                what: format!("push {local}"),
                message: format!(
                    "image {} has no name: give the name to push it as (img push {local} NAME:TAG)",
                    image.id()
                ),
            })?,
        };
        if reference.tag().is_none() {
            return Err(RegistryError::Request {
                what: format!("push {reference}"),
                message: "a push needs a tag, not only a digest".to_string(),
            });
        }
        let reference = reference.with_tag(reference.tag().expect("checked above"));
        let conn = self.connection(&reference)?;
        let distribution = store.distribution(&image)?;
        let manifest_bytes = distribution.manifest_bytes;
        let sources = BlobSources::open(store.state_dir());

        let mut blobs: Vec<&Descriptor> = Vec::new();
        for d in &distribution.blobs {
            if !blobs.iter().any(|b| b.digest() == d.digest()) {
                blobs.push(d);
            }
        }
        let results: Vec<(Digest, BlobEvent, u64)> = self.block_on(
            futures_util::stream::iter(
                blobs
                    .iter()
                    .map(|d| self.push_blob(&conn, &reference, store, &sources, d)),
            )
            .buffer_unordered(self.options.concurrency.max(1))
            .try_collect(),
        )?;

        let content_type = distribution.manifest_descriptor.media_type().to_string();
        let what = format!("manifest of {reference}");
        let url = format!(
            "{}/v2/{}/manifests/{}",
            conn.base,
            reference.repository(),
            reference.tag().expect("checked above")
        );
        let request = Request {
            conn: &conn,
            what: &what,
            repository: reference.repository(),
            access: Access::Push,
        };
        self.block_on(self.retry(&what, || async {
            self.send(&request, Method::PUT, &url, |b| {
                b.header(CONTENT_TYPE, &content_type)
                    .body(manifest_bytes.clone())
            })
            .await
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
            digest: distribution.manifest_descriptor.digest().clone(),
            blobs: results.into_iter().map(|(d, e, _)| (d, e)).collect(),
            uploaded,
        })
    }

    /// Makes sure the target repository has one blob. Returns what it took and the bytes sent.
    async fn push_blob(
        &self,
        conn: &Connection,
        reference: &Reference,
        store: &ImageStore,
        sources: &BlobSources,
        desc: &Descriptor,
    ) -> Result<(Digest, BlobEvent, u64), RegistryError> {
        let digest = desc.digest().to_string();
        let what = format!("blob {digest} of {}", reference.name());
        let progress = self.reporter.blob(&digest, desc.size());
        let done = |event: BlobEvent, sent: u64| Ok((desc.digest().clone(), event, sent));

        let request = Request {
            conn,
            what: &what,
            repository: reference.repository(),
            access: Access::Push,
        };
        let blob_url = format!("{}/v2/{}/blobs/{digest}", conn.base, reference.repository());
        let exists = self
            .retry(&what, || async {
                match self.send(&request, Method::HEAD, &blob_url, |b| b).await {
                    Ok(_) => Ok(true),
                    Err(Failure::Fatal(RegistryError::NotFound { .. })) => Ok(false),
                    Err(failure) => Err(failure),
                }
            })
            .await?;
        if exists {
            progress.finish(&BlobEvent::Exists);
            return done(BlobEvent::Exists, 0);
        }

        for repo in sources.candidates(reference.registry(), reference.repository(), &digest) {
            // A refused mount (202, or the blob gone from that repository) costs a request or
            // two; the upload below follows.
            match self.mount(conn, reference, &repo, &digest).await {
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
        let uploads = format!("{}/v2/{}/blobs/uploads/", conn.base, reference.repository());
        self.retry(&what, || async {
            progress.set_position(0);
            // A monolithic upload: POST for a session, then PUT the whole blob to it.
            let started = self
                .send(&request, Method::POST, &uploads, |b| {
                    b.header(CONTENT_LENGTH, "0")
                })
                .await?;
            let location = started
                .headers()
                .get(LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| RegistryError::Request {
                    what: what.clone(),
                    message: "the registry started an upload without a Location".to_string(),
                })?;
            // A relative Location is relative to the registry.
            let mut url = reqwest::Url::parse(&conn.base)
                .and_then(|base| base.join(location))
                .map_err(|e| RegistryError::Request {
                    what: what.clone(),
                    message: format!("upload Location {location:?}: {e}"),
                })?;
            url.query_pairs_mut().append_pair("digest", &digest);
            let file = tokio::fs::File::open(&path)
                .await
                .map_err(|source| RegistryError::Io {
                    path: path.clone(),
                    source,
                })?;
            let count = progress.counter();
            let body =
                tokio_util::io::ReaderStream::with_capacity(file, 1 << 20).inspect(move |chunk| {
                    if let Ok(c) = chunk {
                        count(c.len() as u64);
                    }
                });
            self.send(&request, Method::PUT, url.as_str(), |b| {
                b.header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, size)
                    .body(reqwest::Body::wrap_stream(body))
            })
            .await
        })
        .await?;
        progress.finish(&BlobEvent::Pushed);
        done(BlobEvent::Pushed, size)
    }

    /// Mounts `digest` from `repo` into `reference`'s repository; `Ok(false)` when the registry
    /// declined. On a token registry the mount is sent with a token that also grants pull on
    /// the source, as Docker asks for: a token for the target alone gets a plain upload
    /// instead (which is left to expire). Elsewhere it is one request with the credentials
    /// every request carries. The registry's challenge is known by now: the HEAD before it
    /// asked for it.
    async fn mount(
        &self,
        conn: &Connection,
        reference: &Reference,
        repo: &str,
        digest: &str,
    ) -> Result<bool, RegistryError> {
        if let Some(challenge) = self.bearer_challenge(conn).await? {
            return self
                .mount_with_token(conn, &challenge, reference, repo, digest)
                .await;
        }
        let what = format!(
            "mount of blob {digest} from {repo} into {}",
            reference.name()
        );
        let url = format!("{}/v2/{}/blobs/uploads/", conn.base, reference.repository());
        let request = Request {
            conn,
            what: &what,
            repository: reference.repository(),
            access: Access::Push,
        };
        let mounted = self
            .send(&request, Method::POST, &url, |b| {
                b.query(&[("mount", digest), ("from", repo)])
                    .header(CONTENT_LENGTH, "0")
            })
            .await;
        match mounted {
            Ok(response) => Ok(response.status() == reqwest::StatusCode::CREATED),
            // The upload that follows reports what is wrong, if anything.
            Err(failure) => {
                tracing::debug!(%digest, from = %repo, ?failure, "mount refused");
                Ok(false)
            }
        }
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
                408 | 429 | 500..=599 => Err(status_failure(&conn.registry, &what, response).await),
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

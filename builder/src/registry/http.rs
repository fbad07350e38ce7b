//! One registry request with the answer's status and headers in hand, for manifests (GET,
//! PUT), blobs (GET with Range, HEAD), uploads (POST, then a monolithic PUT) and mounts:
//! credentials by the registry's challenge (`send`, `authorize`), an answer sorted by its status
//! (`status_failure`: 429 and 5xx are retried whatever the body says), and the wait it asks
//! for (`retry_after`, which the `Retrier` honours). img used oci-client for these until it
//! needed the status and `Retry-After`, which oci-client's errors do not carry
//! (ARCHITECTURE.md, "Dependencies and why").

use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{RequestBuilder, Response, StatusCode};

use super::RegistryError;
use super::auth::Credentials;
use super::client::{Connection, Failure, Registry, error_chain, tls_failure};
use super::token::refusal_text;

/// What a request does to a repository, which is what its token must grant.
#[derive(Clone, Copy, Debug)]
pub(super) enum Access {
    Pull,
    Push,
}

impl Access {
    fn actions(self) -> &'static str {
        match self {
            Access::Pull => "pull",
            Access::Push => "pull,push",
        }
    }
}

/// A request img sends to one repository of a registry.
pub(super) struct Request<'a> {
    pub conn: &'a Connection,
    /// What the request is for, in errors (`manifest of NAME:TAG`).
    pub what: &'a str,
    pub repository: &'a str,
    pub access: Access,
}

impl Registry {
    /// Sends one request to `url` (`customize` adds headers and a body) with the credentials
    /// the registry wants, and returns the answer when its status is a success (2xx); any
    /// other answer becomes a `Failure` by its status (`status_failure`).
    pub(super) async fn send(
        &self,
        request: &Request<'_>,
        method: reqwest::Method,
        url: &str,
        customize: impl FnOnce(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response, Failure> {
        let conn = request.conn;
        let mut builder = conn.http.request(method, url);
        if same_origin(url, &conn.base) {
            builder = self.authorize(request, builder).await?;
        }
        let response = customize(builder)
            .send()
            .await
            .map_err(|e| transport_failure(&conn.registry, &e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(status_failure(&conn.registry, request.what, response).await)
    }

    /// Adds credentials to a request for `request.repository`: a bearer token for its access
    /// when the registry names a token server, else basic auth when img has a password.
    async fn authorize(
        &self,
        request: &Request<'_>,
        builder: RequestBuilder,
    ) -> Result<RequestBuilder, Failure> {
        let conn = request.conn;
        match self.bearer_challenge(conn).await? {
            Some(challenge) => {
                let scopes = [format!(
                    "repository:{}:{}",
                    request.repository,
                    request.access.actions()
                )];
                let token = self
                    .token(conn, &challenge, &scopes)
                    .await
                    .map_err(|f| match f {
                        // Named after the request it was for, not the token request.
                        Failure::Fatal(RegistryError::TokenRefused {
                            registry, message, ..
                        }) => Failure::Fatal(RegistryError::TokenRefused {
                            registry,
                            what: request.what.to_string(),
                            message,
                        }),
                        other => other,
                    })?;
                Ok(builder.bearer_auth(token))
            }
            None => Ok(match &conn.credentials {
                Some(Credentials::Basic { username, password }) => {
                    builder.basic_auth(username, Some(password))
                }
                Some(Credentials::IdentityToken(token)) => {
                    builder.basic_auth("<token>", Some(token))
                }
                None => builder,
            }),
        }
    }
}

/// Whether `url` is on the registry at `base` (same scheme, host and port). Credentials go
/// nowhere else: an upload `Location` may point at storage on another host, and the
/// distribution spec forbids forwarding them there (CVE-2020-15157).
fn same_origin(url: &str, base: &str) -> bool {
    match (reqwest::Url::parse(url), reqwest::Url::parse(base)) {
        (Ok(url), Ok(base)) => {
            url.scheme() == base.scheme()
                && url.host_str() == base.host_str()
                && url.port_or_known_default() == base.port_or_known_default()
        }
        _ => false,
    }
}

/// A request that got no answer: a TLS failure is final (it fails the same way every time),
/// anything else (refused or cut connections, timeouts) is worth another try.
pub(super) fn transport_failure(registry: &str, e: &reqwest::Error) -> Failure {
    match tls_failure(registry, e) {
        Some(tls) => Failure::Fatal(tls),
        None if e.is_builder() => Failure::Fatal(RegistryError::Http(error_chain(e))),
        None => Failure::Transient(error_chain(e)),
    }
}

/// Sorts an answer that is not a success by its status: 401 and 403 are refused credentials,
/// 404 is not found, 408, 429 and 5xx are worth another try after the wait the registry asks
/// for in `Retry-After`, and the rest are final, with the registry's own words.
pub(super) async fn status_failure(registry: &str, what: &str, response: Response) -> Failure {
    let status = response.status();
    let retry_after = retry_after(response.headers(), SystemTime::now());
    let body = read_capped(response, 4096).await.unwrap_or_default();
    let message = if body.is_empty() {
        String::new()
    } else {
        refusal_text(status, &String::from_utf8_lossy(&body))
    };
    match status.as_u16() {
        401 | 403 => Failure::Fatal(RegistryError::Unauthorized {
            registry: registry.to_string(),
            what: what.to_string(),
        }),
        404 => Failure::Fatal(RegistryError::NotFound {
            registry: registry.to_string(),
            what: what.to_string(),
        }),
        408 | 429 | 500..=599 => Failure::Status {
            registry: registry.to_string(),
            status,
            retry_after,
            message,
        },
        _ => Failure::Fatal(RegistryError::Request {
            what: what.to_string(),
            message: match message.is_empty() {
                true => format!("HTTP {status}"),
                false => format!("HTTP {status}: {message}"),
            },
        }),
    }
}

/// How long `Retry-After` asks to wait, in seconds or as an HTTP date (RFC 9110, 10.2.3),
/// from `now`; a date in the past is no wait. `None` without the header or when it is not
/// either form.
pub(super) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(date.timestamp().max(0) as u64);
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Whether an answer is too long: its body, read up to `cap` bytes. `Err` holds the length
/// when it is over `cap` (by `Content-Length`, before anything is read, or by what came).
pub(super) async fn read_capped(response: Response, cap: u64) -> Result<Vec<u8>, ReadError> {
    if let Some(length) = response.content_length()
        && length > cap
    {
        return Err(ReadError::TooLong(length));
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(ReadError::Transport)?;
        body.extend_from_slice(&chunk);
        if body.len() as u64 > cap {
            return Err(ReadError::TooLong(body.len() as u64));
        }
    }
    Ok(body)
}

/// Why `read_capped` stopped.
#[derive(Debug)]
pub(super) enum ReadError {
    /// At least this many bytes, more than the cap.
    TooLong(u64),
    Transport(reqwest::Error),
}

/// A duration as a person reads it in a retry line: `250ms`, `1s`, `1.5s`.
pub(super) fn human(d: Duration) -> String {
    if d.is_zero() {
        "0s".to_string()
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// The status line's words for a status (`429 Too Many Requests`).
pub(super) fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

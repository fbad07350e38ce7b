//! `Registry`: one tokio runtime and one connection per registry host (an HTTP client, the
//! credentials, the HTTP/HTTPS choice, the bearer challenge and tokens), and the retry policy
//! every request goes through.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::RegistryError;
use super::auth::{self, Credentials};
use super::http::{human, status_text};
use super::progress::Reporter;
use super::token::{Challenge, Token};
use crate::image::{Platform, Reference};

/// How registry operations behave; the defaults suit the command line.
#[derive(Clone, Debug)]
pub struct Options {
    /// Hosts (`host` or `host:port`) spoken to over plain HTTP, besides loopback addresses.
    pub insecure_registries: Vec<String>,
    /// The platform picked from image indexes (default: linux/amd64 on this host's architecture).
    pub platform: Option<Platform>,
    /// Tries per request (blob, upload, manifest) before giving up; at least 1.
    pub max_attempts: u32,
    /// The first wait between tries; it doubles each time, up to 8 seconds. An answer with
    /// `Retry-After` is waited for as it asks instead, up to `MAX_RETRY_AFTER`.
    pub backoff: Duration,
    /// Blobs transferred at once.
    pub concurrency: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            insecure_registries: Vec::new(),
            platform: None,
            max_attempts: 5,
            backoff: Duration::from_millis(250),
            concurrency: 3,
        }
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Between two reads of an answer, not for the whole of it: a large blob takes longer.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const USER_AGENT: &str = concat!("img/", env!("CARGO_PKG_VERSION"));

/// The key Docker files a registry's credentials under in config.json, and the host img talks
/// to: `docker.io` for Docker Hub (whose config key is `https://index.docker.io/v1/`), else the
/// host itself.
pub fn registry_key(registry: &str) -> String {
    match registry {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => {
            "https://index.docker.io/v1/".to_string()
        }
        other => other.to_string(),
    }
}

/// Whether `host` (`host` or `host:port`) is spoken to over plain HTTP: loopback addresses and
/// `localhost` always, as Docker does, and the hosts in `insecure` (with or without the port).
pub fn is_insecure_host(host: &str, insecure: &[String]) -> bool {
    if insecure.iter().any(|h| h == host) {
        return true;
    }
    let name = strip_port(host);
    if insecure.iter().any(|h| h == name) {
        return true;
    }
    if name == "localhost" {
        return true;
    }
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [::1]:5000
        return rest.split_once(']').map_or(host, |(h, _)| h);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.contains(':') => h,
        _ => host,
    }
}

/// A connection to registries: a runtime, clients by host, and the credentials of each.
pub struct Registry {
    runtime: tokio::runtime::Runtime,
    pub(super) options: Options,
    pub(super) reporter: Reporter,
    clients: Mutex<HashMap<String, Connection>>,
}

/// What the operations on one registry host share.
#[derive(Clone)]
pub(super) struct Connection {
    pub registry: String,
    /// The stored credentials: basic auth, or what token requests are made with (token.rs).
    pub credentials: Option<Credentials>,
    pub http: reqwest::Client,
    /// `http://HOST` or `https://HOST`: the scheme and host requests go to.
    pub base: String,
    /// The registry's answer to `GET /v2/` once a request needed it: its bearer challenge, or
    /// `None` for a registry that does not use tokens.
    pub bearer: Arc<tokio::sync::OnceCell<Option<Challenge>>>,
    /// Tokens img asked for itself, by their scopes joined with spaces.
    pub tokens: Arc<Mutex<HashMap<String, Token>>>,
}

impl Registry {
    pub fn new(options: Options, reporter: Reporter) -> Result<Registry, RegistryError> {
        install_crypto_provider();
        // Two workers: hashing and writing blobs take CPU, and this machine class has two cores.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("img-registry")
            .enable_all()
            .build()
            .map_err(RegistryError::Runtime)?;
        Ok(Registry {
            runtime,
            options,
            reporter,
            clients: Mutex::new(HashMap::new()),
        })
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    pub(super) fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// The client for `reference`'s registry, with its stored credentials (read once).
    pub(super) fn connection(&self, reference: &Reference) -> Result<Connection, RegistryError> {
        let registry = reference.registry().to_string();
        let mut clients = self.clients.lock().expect("poisoned");
        if let Some(c) = clients.get(&registry) {
            return Ok(c.clone());
        }
        let credentials = auth::credentials(&registry)?;
        let scheme = if is_insecure_host(&registry, &self.options.insecure_registries) {
            "http"
        } else {
            "https"
        };
        let connection = Connection {
            credentials,
            http: self.http_client()?,
            base: format!("{scheme}://{}", oci_reference_registry(&registry)),
            bearer: Default::default(),
            tokens: Default::default(),
            registry: registry.clone(),
        };
        clients.insert(registry, connection.clone());
        Ok(connection)
    }

    /// The HTTP client of every request img sends: the system trust store (through reqwest's
    /// rustls-platform-verifier), connect and read timeouts, img's user agent.
    pub(super) fn http_client(&self) -> Result<reqwest::Client, RegistryError> {
        reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(USER_AGENT)
            .build()
            .map_err(|e| RegistryError::Http(error_chain(&e)))
    }

    /// Runs `attempt` until it succeeds, fails for good, or has been tried
    /// `options.max_attempts` times, waiting `backoff`, 2×`backoff`, … in between.
    pub(super) async fn retry<T, F, Fut>(
        &self,
        what: &str,
        mut attempt: F,
    ) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut retrier = self.retrier(what);
        loop {
            match attempt().await {
                Ok(v) => return Ok(v),
                Err(failure) => retrier.failed(failure).await?,
            }
        }
    }

    /// The retry budget of one request, for loops that keep state between tries.
    pub(super) fn retrier(&self, what: &str) -> Retrier<'_> {
        Retrier {
            registry: self,
            what: what.to_string(),
            attempt: 0,
            wait: self.options.backoff,
        }
    }
}

/// Counts the tries of one request and waits between them.
pub(super) struct Retrier<'a> {
    registry: &'a Registry,
    what: String,
    attempt: u32,
    wait: Duration,
}

impl Retrier<'_> {
    /// After a failed try: waits and returns `Ok` if another try is due, else the error. An
    /// answer that says how long to wait (`Retry-After`) is waited for, up to
    /// `MAX_RETRY_AFTER`; otherwise the wait doubles from `options.backoff` up to 8 seconds.
    /// Each retry is one line on the reporter, naming the attempt about to be made.
    pub(super) async fn failed(&mut self, failure: Failure) -> Result<(), RegistryError> {
        self.attempt += 1;
        let attempts = self.registry.options.max_attempts.max(1);
        let (message, asked) = match failure {
            Failure::Fatal(e) => return Err(e),
            Failure::Transient(message) => (message, None),
            Failure::Status {
                registry,
                status,
                retry_after,
                message,
            } => {
                let mut text = format!("registry {registry} answered {}", status_text(status));
                if !message.is_empty() {
                    text.push_str(&format!(" ({message})"));
                }
                (text, retry_after)
            }
        };
        if self.attempt >= attempts {
            return Err(RegistryError::Exhausted {
                what: self.what.clone(),
                attempts,
                message,
            });
        }
        let wait = retry_wait(asked, self.wait);
        tracing::info!(what = %self.what, attempt = self.attempt, %message, ?wait, "retrying");
        self.registry.reporter.note(&format!(
            "{}: {message}; retrying in {} (attempt {} of {attempts})",
            self.what,
            human(wait),
            self.attempt + 1,
        ));
        tokio::time::sleep(wait).await;
        self.wait = (self.wait * 2).min(Duration::from_secs(8));
        Ok(())
    }
}

/// The wait before the next try: what the registry asked for, capped, else `backoff`.
pub(super) fn retry_wait(asked: Option<Duration>, backoff: Duration) -> Duration {
    asked.map_or(backoff, |d| d.min(MAX_RETRY_AFTER))
}

/// The longest `Retry-After` img waits for before a retry. A registry that asks for more
/// gets its retry sooner, and another 429 if it meant it; waiting minutes without a word
/// would look like a hang.
pub(super) const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The host img sends `registry`'s requests to: Docker Hub's API is not at `docker.io`.
fn oci_reference_registry(registry: &str) -> &str {
    if registry == "docker.io" {
        "index.docker.io"
    } else {
        registry
    }
}

/// reqwest with rustls-no-provider needs a process-wide crypto provider: ring, which builds in
/// seconds where aws-lc-rs needs cmake and minutes.
fn install_crypto_provider() {
    // Err means one is installed already (a second Registry in this process).
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Whether a failed request is worth another try.
#[derive(Debug)]
pub(super) enum Failure {
    /// Connection errors, timeouts, bodies cut short.
    Transient(String),
    /// An answer whose status says to try again (408, 429, 5xx), with the wait the registry
    /// asked for and what its body said.
    Status {
        registry: String,
        status: reqwest::StatusCode,
        retry_after: Option<Duration>,
        message: String,
    },
    Fatal(RegistryError),
}

impl From<RegistryError> for Failure {
    fn from(e: RegistryError) -> Self {
        Failure::Fatal(e)
    }
}

/// The TLS error behind a failed request, if that is why it failed. A certificate the client
/// does not trust or a failed handshake will fail the same way on every try, so it is reported
/// at once, naming the host, instead of after the retries as a connection error.
pub(super) fn tls_failure(
    registry: &str,
    e: &(dyn std::error::Error + 'static),
) -> Option<RegistryError> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            let hint = match tls {
                rustls::Error::InvalidCertificate(_) => {
                    " (trust the registry's CA in the system store, or name a PEM file of \
                     trusted CAs in SSL_CERT_FILE)"
                }
                _ => "",
            };
            return Some(RegistryError::Tls {
                registry: registry.to_string(),
                message: tls.to_string(),
                hint,
            });
        }
        // An `io::Error` wrapping another error reports that error's source as its own, so
        // the wrapped error (tokio-rustls nests an io::Error in another) is only reachable
        // through `get_ref`.
        current = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

/// An error and its sources on one line: reqwest's own message is only "error sending request".
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s
}

//! Credentials as Docker keeps them: read through the docker_credential crate (`auths`,
//! `credsStore`, `credHelpers` in `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`), and
//! `img login`/`img logout`, which verify the credentials and then store or erase them as
//! Docker does, themselves because that crate only reads: through the credential helper the
//! config names (`docker-credential-NAME store`/`erase`), else in the config's `auths`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::PathBuf;

use base64::Engine as _;
use docker_credential::{CredentialRetrievalError, DockerCredential};
use serde_json::{Map, Value};

use super::RegistryError;
use super::client::{Failure, Registry, error_chain, is_insecure_host, registry_key, tls_failure};
use super::token::refusal_text;

/// Stored credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Basic { username: String, password: String },
    IdentityToken(String),
}

impl std::fmt::Debug for Credentials {
    // Never print a secret, even in debug logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credentials::IdentityToken(_) => f.write_str("IdentityToken(***)"),
        }
    }
}

/// Docker's client config file: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn docker_config_path() -> PathBuf {
    let dir = std::env::var_os("DOCKER_CONFIG")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
            PathBuf::from(home).join(".docker")
        });
    dir.join("config.json")
}

/// The credentials stored for `registry`, `None` when there are none (or no config file).
pub(super) fn credentials(registry: &str) -> Result<Option<Credentials>, RegistryError> {
    let path = docker_config_path();
    let file = match fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(RegistryError::Io { path, source }),
    };
    match docker_credential::get_credential_from_reader(file, &registry_key(registry)) {
        Ok(DockerCredential::UsernamePassword(username, password)) => {
            Ok(Some(Credentials::Basic { username, password }))
        }
        Ok(DockerCredential::IdentityToken(token)) => Ok(Some(Credentials::IdentityToken(token))),
        Err(CredentialRetrievalError::NoCredentialConfigured) => Ok(None),
        Err(CredentialRetrievalError::ConfigReadError) => Err(RegistryError::Config {
            path,
            message: "not valid JSON".to_string(),
        }),
        Err(e) => {
            let helper = read_config(&path)
                .ok()
                .and_then(|config| helper_for(&config, &registry_key(registry)))
                .unwrap_or_else(|| "the credential helper".to_string());
            let on_path = std::env::var_os("PATH").is_some_and(|path| {
                std::env::split_paths(&path).any(|dir| dir.join(&helper).is_file())
            });
            helper_error(registry, &helper, on_path, e)
        }
    }
}

/// The helper program config.json names for `key`: `credHelpers[key]`, else `credsStore`, as
/// `docker-credential-NAME`.
fn helper_for(config: &Map<String, Value>, key: &str) -> Option<String> {
    let name = config
        .get("credHelpers")
        .and_then(|h| h.get(key))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .or_else(|| config.get("credsStore").and_then(Value::as_str))?;
    Some(format!("docker-credential-{name}"))
}

/// What a failed credential helper means. A helper that has nothing for the registry says so
/// with docker-credential-helpers' "credentials not found" error, which Docker takes as no
/// credentials (an anonymous pull), and so does img; anything else is an error that names the
/// helper and repeats what it printed. `on_path` tells a helper that is missing from one that
/// exited before it read the request (both are a failed write to its stdin to the crate).
pub(super) fn helper_error(
    registry: &str,
    helper: &str,
    on_path: bool,
    e: CredentialRetrievalError,
) -> Result<Option<Credentials>, RegistryError> {
    let message = match e {
        CredentialRetrievalError::HelperFailure { stdout, stderr, .. } => {
            let said = [stderr.trim(), stdout.trim()]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            if said.contains("credentials not found") {
                return Ok(None);
            }
            if said.is_empty() {
                format!("`{helper} get` failed without a message")
            } else {
                format!("`{helper} get` failed: {}", said.replace('\n', " "))
            }
        }
        CredentialRetrievalError::HelperCommunicationError if on_path => {
            format!("`{helper} get` exited before reading which registry it was asked for")
        }
        CredentialRetrievalError::HelperCommunicationError => {
            format!("could not run `{helper} get`: {helper} is not on PATH")
        }
        CredentialRetrievalError::MalformedHelperResponse => format!(
            "`{helper} get` did not answer with JSON like {{\"Username\": ..., \"Secret\": ...}}"
        ),
        other => other.to_string(),
    };
    Err(RegistryError::Credentials {
        registry: registry.to_string(),
        message,
    })
}

/// Checks `username` and `password` against `registry` (basic or bearer-token auth, as the
/// registry's challenge asks), then stores them where Docker would: with the credential helper
/// the config names for this registry (`credHelpers`, else `credsStore`), or else in the
/// config file's `auths`. Returns where they went (the helper program or the file).
pub fn login(
    registry: &Registry,
    host: &str,
    username: &str,
    password: &str,
) -> Result<String, RegistryError> {
    let http = registry.http_client()?;
    let scheme = if is_insecure_host(host, &registry.options().insecure_registries) {
        "http"
    } else {
        "https"
    };
    let api_host = match host {
        "docker.io" | "index.docker.io" => "registry-1.docker.io",
        h => h,
    };
    let url = format!("{scheme}://{api_host}/v2/");
    registry.block_on(registry.retry(&format!("login to {host}"), || {
        verify(&http, host, &url, username, password)
    }))?;
    let path = docker_config_path();
    let mut config = read_config(&path)?;
    let key = registry_key(host);
    if let Some(helper) = helper_for(&config, &key) {
        let request =
            serde_json::json!({ "ServerURL": key, "Username": username, "Secret": password });
        let program = run_helper(host, &helper, "store", request.to_string().as_bytes())?;
        // A plain entry left from an earlier login would be read before the helper.
        if remove_auths_entry(&mut config, &key, host) {
            write_config(&path, &config)?;
        }
        return Ok(program);
    }
    let auths = config
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()));
    if !auths.is_object() {
        *auths = Value::Object(Map::new());
    }
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    auths
        .as_object_mut()
        .expect("made an object above")
        .insert(key, serde_json::json!({ "auth": token }));
    write_config(&path, &config)?;
    Ok(path.display().to_string())
}

/// Forgets `registry`'s credentials: the entry in the `auths` of Docker's config file, and
/// what the credential helper for it holds (`erase`). Returns whether there was anything.
pub fn logout(host: &str) -> Result<bool, RegistryError> {
    let path = docker_config_path();
    if !path.exists() {
        return Ok(false);
    }
    let mut config = read_config(&path)?;
    let key = registry_key(host);
    let mut removed = false;
    if let Some(helper) = helper_for(&config, &key) {
        match run_helper(host, &helper, "erase", key.as_bytes()) {
            Ok(_) => removed = true,
            // docker-credential-helpers' answer when it holds nothing for the server.
            Err(RegistryError::Credentials { message, .. })
                if message.contains("credentials not found") => {}
            Err(e) => return Err(e),
        }
    }
    if remove_auths_entry(&mut config, &key, host) {
        write_config(&path, &config)?;
        removed = true;
    }
    Ok(removed)
}

/// Removes `host`'s entry (under `key` or the bare host) from the config's `auths`.
fn remove_auths_entry(config: &mut Map<String, Value>, key: &str, host: &str) -> bool {
    config
        .get_mut("auths")
        .and_then(Value::as_object_mut)
        .map(|auths| auths.remove(key).is_some() | auths.remove(host).is_some())
        .unwrap_or(false)
}

/// Runs the credential helper `program` with `action` and `input` on its stdin, as Docker does
/// for `store` (a JSON request) and `erase` (the server); returns the program's name.
fn run_helper(
    host: &str,
    program: &str,
    action: &str,
    input: &[u8],
) -> Result<String, RegistryError> {
    use std::process::{Command, Stdio};
    let failed = |message: String| RegistryError::Credentials {
        registry: host.to_string(),
        message,
    };
    let mut child = Command::new(program)
        .arg(action)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("could not run `{program} {action}`: {e}")))?;
    // A helper that exits without reading fails below with what it printed.
    let _ = child.stdin.take().map(|mut i| i.write_all(input));
    let out = child
        .wait_with_output()
        .map_err(|e| failed(format!("`{program} {action}`: {e}")))?;
    if !out.status.success() {
        let said = [&out.stderr, &out.stdout]
            .iter()
            .map(|b| String::from_utf8_lossy(b).trim().replace('\n', " "))
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        return Err(failed(format!("`{program} {action}` failed: {said}")));
    }
    Ok(program.to_string())
}

/// The registry's answer to `GET /v2/` decides the flow, as in `docker login`.
async fn verify(
    http: &reqwest::Client,
    host: &str,
    url: &str,
    username: &str,
    password: &str,
) -> Result<(), Failure> {
    let transient = |e: reqwest::Error| match tls_failure(host, &e) {
        Some(tls) => Failure::Fatal(tls),
        None => Failure::Transient(error_chain(&e)),
    };
    let rejected = || {
        Failure::Fatal(RegistryError::Unauthorized {
            registry: host.to_string(),
            what: format!("login as {username}"),
        })
    };
    let status_failure = |what: &str, status: reqwest::StatusCode| {
        if status.is_server_error() || status.as_u16() == 429 {
            Failure::Transient(format!("{what}: HTTP {status}"))
        } else {
            Failure::Fatal(RegistryError::Request {
                what: format!("login to {host}: {what}"),
                message: format!("HTTP {status}"),
            })
        }
    };
    let probe = http.get(url).send().await.map_err(transient)?;
    match probe.status().as_u16() {
        200 => return Ok(()),
        401 => {}
        _ => return Err(status_failure(url, probe.status())),
    }
    let challenge = probe
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bearer = challenge.to_ascii_lowercase().starts_with("bearer");
    let response = if bearer {
        let realm = challenge_param(&challenge, "realm").ok_or_else(|| {
            Failure::Fatal(RegistryError::Request {
                what: format!("login to {host}"),
                message: format!("bearer challenge without a realm: {challenge}"),
            })
        })?;
        let mut query = vec![("account", username.to_string())];
        if let Some(service) = challenge_param(&challenge, "service") {
            query.push(("service", service));
        }
        http.get(&realm)
            .query(&query)
            .basic_auth(username, Some(password))
            .send()
            .await
            .map_err(transient)?
    } else {
        http.get(url)
            .basic_auth(username, Some(password))
            .send()
            .await
            .map_err(transient)?
    };
    let status = response.status();
    match status.as_u16() {
        200 => Ok(()),
        // A token server's refusal says why, in its own words: Docker prints them.
        401 | 403 if bearer => {
            let body = response.text().await.unwrap_or_default();
            Err(Failure::Fatal(RegistryError::TokenRefused {
                registry: host.to_string(),
                what: format!("login as {username}"),
                message: refusal_text(status, &body),
            }))
        }
        401 | 403 => Err(rejected()),
        _ => Err(status_failure(response.url().as_str(), status)),
    }
}

/// A quoted parameter of a WWW-Authenticate challenge: `realm="https://auth"`.
pub(super) fn challenge_param(challenge: &str, name: &str) -> Option<String> {
    let re = regex::Regex::new(&format!(r#"(?i)\b{name}="([^"]*)""#)).expect("valid regex");
    re.captures(challenge).map(|c| c[1].to_string())
}

pub(super) fn read_config(path: &std::path::Path) -> Result<Map<String, Value>, RegistryError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Map::new()),
        Err(source) => {
            return Err(RegistryError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(RegistryError::Config {
            path: path.to_path_buf(),
            message: "not a JSON object".to_string(),
        }),
        Err(e) => Err(RegistryError::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        }),
    }
}

/// Replaces the config file by rename, readable by its owner only: it holds passwords.
pub(super) fn write_config(
    path: &std::path::Path,
    config: &Map<String, Value>,
) -> Result<(), RegistryError> {
    let io = |source| RegistryError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().expect("a config path has a parent");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    let mut bytes = serde_json::to_vec_pretty(config).expect("JSON values serialize");
    bytes.push(b'\n');
    imgfs::atomic::write_atomically(path, 0o600, |f| {
        // Whatever the umask: the file holds passwords.
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(&bytes)
    })
    .map_err(io)
}

//! Bearer tokens from a registry's token server (distribution's token flow, as Docker asks for
//! them): one per set of scopes, cached while fresh, for every request to a registry whose
//! `GET /v2/` challenge names a token server; a cross-repository mount's token also grants pull
//! on the source repository. A refusal is reported in the token server's own words.

use std::time::{Duration, Instant};

use super::RegistryError;
use super::auth::{Credentials, challenge_param};
use super::client::{Connection, Failure, Registry, error_chain, tls_failure};
use super::http::{retry_after, status_failure};

/// Docker's OAuth2 client id for the refresh-token grant.
const CLIENT_ID: &str = "docker";
/// Docker's lifetime for a token whose answer gives none (and its minimum).
const MIN_LIFETIME: Duration = Duration::from_secs(60);

/// A `WWW-Authenticate: Bearer realm="…",service="…"` challenge: where tokens come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Challenge {
    pub realm: String,
    pub service: Option<String>,
}

impl Challenge {
    /// The bearer challenge in a WWW-Authenticate value; `None` for Basic and other schemes.
    pub(super) fn parse(header: &str) -> Option<Challenge> {
        let scheme = header.trim_start().split([' ', '\t']).next()?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        Some(Challenge {
            realm: challenge_param(header, "realm")?,
            service: challenge_param(header, "service"),
        })
    }
}

impl Registry {
    /// `conn`'s bearer challenge, asked of `GET /v2/` once per connection; `None` when the
    /// registry is open or wants basic auth.
    pub(super) async fn bearer_challenge(
        &self,
        conn: &Connection,
    ) -> Result<Option<Challenge>, RegistryError> {
        let url = format!("{}/v2/", conn.base);
        let what = format!("GET {url}");
        conn.bearer
            .get_or_try_init(|| {
                self.retry(&what, || async {
                    let response =
                        conn.http.get(&url).send().await.map_err(|e| {
                            match tls_failure(&conn.registry, &e) {
                                Some(tls) => Failure::Fatal(tls),
                                None => Failure::Transient(error_chain(&e)),
                            }
                        })?;
                    // A throttled or failing registry says nothing about its challenge yet.
                    if matches!(response.status().as_u16(), 408 | 429 | 500..=599) {
                        return Err(status_failure(&conn.registry, &what, response).await);
                    }
                    Ok(response
                        .headers()
                        .get_all(reqwest::header::WWW_AUTHENTICATE)
                        .iter()
                        .filter_map(|h| h.to_str().ok())
                        .find_map(Challenge::parse))
                })
            })
            .await
            .cloned()
    }

    /// A token granting `scopes` on `conn`'s registry, from the connection's cache while it is
    /// fresh, else from the token server (one try: callers retry).
    pub(super) async fn token(
        &self,
        conn: &Connection,
        challenge: &Challenge,
        scopes: &[String],
    ) -> Result<String, Failure> {
        let key = scopes.join(" ");
        let cached = conn.tokens.lock().expect("poisoned").get(&key).cloned();
        if let Some(token) = cached.filter(Token::fresh) {
            return Ok(token.value);
        }
        let token = fetch(
            &conn.http,
            &conn.registry,
            challenge,
            scopes,
            conn.credentials.as_ref(),
        )
        .await?;
        let value = token.value.clone();
        conn.tokens.lock().expect("poisoned").insert(key, token);
        Ok(value)
    }
}

/// A token and when to stop using it.
#[derive(Clone, Debug)]
pub(super) struct Token {
    pub value: String,
    pub expires: Instant,
}

impl Token {
    /// Whether it is still good for a request sent now (with a margin for the round trip).
    pub(super) fn fresh(&self) -> bool {
        Instant::now() + Duration::from_secs(10) < self.expires
    }
}

/// The token server's answer (distribution's token spec; `access_token` is the OAuth2 name).
#[derive(serde::Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: String,
    #[serde(default)]
    access_token: String,
    #[serde(default)]
    expires_in: u64,
}

/// Asks `challenge`'s token server for a token granting `scopes` on `registry`, as Docker does:
/// an identity token is an OAuth2 refresh token, sent in a POSTed form; a username and password
/// are basic auth on a GET; without credentials the GET is anonymous. A refusal (401 or 403) is
/// `TokenRefused` with the server's own text; 5xx, 429 and connection errors are transient.
pub(super) async fn fetch(
    http: &reqwest::Client,
    registry: &str,
    challenge: &Challenge,
    scopes: &[String],
    credentials: Option<&Credentials>,
) -> Result<Token, Failure> {
    let transient = |e: reqwest::Error| match tls_failure(registry, &e) {
        Some(tls) => Failure::Fatal(tls),
        None => Failure::Transient(error_chain(&e)),
    };
    let service = challenge.service.as_deref();
    let request = match credentials {
        Some(Credentials::IdentityToken(refresh)) => {
            // reqwest's `form` feature is off; `Url`'s query serializer is the same
            // application/x-www-form-urlencoded encoding.
            let mut form = reqwest::Url::parse("http://form/").expect("a valid URL");
            form.query_pairs_mut()
                .append_pair("grant_type", "refresh_token")
                .append_pair("refresh_token", refresh)
                .append_pair("client_id", CLIENT_ID)
                .append_pair("scope", &scopes.join(" "))
                .extend_pairs(service.map(|s| ("service", s)));
            http.post(&challenge.realm)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(form.query().unwrap_or_default().to_string())
        }
        Some(Credentials::Basic { username, password }) => http
            .get(&challenge.realm)
            .query(&token_query(scopes, service, Some(username)))
            .basic_auth(username, Some(password)),
        None => http
            .get(&challenge.realm)
            .query(&token_query(scopes, service, None)),
    };
    let response = request.send().await.map_err(transient)?;
    let status = response.status();
    let retry_after = retry_after(response.headers(), std::time::SystemTime::now());
    let body = response.text().await.map_err(transient)?;
    let what = format!("a token for {}", scopes.join(" "));
    match status.as_u16() {
        200 => {}
        401 | 403 => {
            return Err(Failure::Fatal(RegistryError::TokenRefused {
                registry: registry.to_string(),
                what,
                message: refusal_text(status, &body),
            }));
        }
        408 | 429 | 500..=599 => {
            // The token server answered, which may be another host than the registry's.
            let server = reqwest::Url::parse(&challenge.realm)
                .ok()
                .and_then(|u| {
                    let host = u.host_str()?.to_string();
                    Some(match u.port() {
                        Some(port) => format!("{host}:{port}"),
                        None => host,
                    })
                })
                .unwrap_or_else(|| registry.to_string());
            return Err(Failure::Status {
                registry: server,
                status,
                retry_after,
                message: format!("to {what}: {}", refusal_text(status, &body)),
            });
        }
        _ => {
            return Err(Failure::Fatal(RegistryError::Request {
                what: format!("{what} from {}", challenge.realm),
                message: refusal_text(status, &body),
            }));
        }
    }
    let answer: TokenAnswer = serde_json::from_str(&body).map_err(|e| {
        Failure::Fatal(RegistryError::Request {
            what: format!("{what} from {}", challenge.realm),
            message: format!("not a token answer: {e}"),
        })
    })?;
    let value = if answer.access_token.is_empty() {
        answer.token
    } else {
        answer.access_token
    };
    if value.is_empty() {
        return Err(Failure::Fatal(RegistryError::Request {
            what: format!("{what} from {}", challenge.realm),
            message: "the answer holds no token".to_string(),
        }));
    }
    Ok(Token {
        value,
        expires: Instant::now() + MIN_LIFETIME.max(Duration::from_secs(answer.expires_in)),
    })
}

/// The query of a token GET: one `scope` parameter per scope, as Docker sends them.
fn token_query<'a>(
    scopes: &'a [String],
    service: Option<&'a str>,
    account: Option<&'a str>,
) -> Vec<(&'static str, &'a str)> {
    let mut query: Vec<(&str, &str)> = scopes.iter().map(|s| ("scope", s.as_str())).collect();
    query.extend(service.map(|s| ("service", s)));
    query.extend(account.map(|a| ("account", a)));
    query
}

/// What a token server said when it refused: distribution's `{"errors":[{code, message,
/// detail}]}` as Docker prints it (`unauthorized: incorrect username or password`), Docker
/// Hub's `{"details": "…"}`, else the body's first line, else the status.
pub(super) fn refusal_text(status: reqwest::StatusCode, body: &str) -> String {
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(body) {
        let errors: Vec<String> = json
            .get("errors")
            .and_then(|e| e.as_array())
            .into_iter()
            .flatten()
            .filter_map(|e| {
                let code = e.get("code").and_then(|c| c.as_str()).unwrap_or_default();
                let code = code.to_ascii_lowercase().replace('_', " ");
                let message = e.get("message").and_then(|m| m.as_str()).unwrap_or("");
                let mut text = match (code.is_empty(), message.is_empty()) {
                    (true, true) => return None,
                    (false, false) => format!("{code}: {message}"),
                    (true, false) => message.to_string(),
                    (false, true) => code,
                };
                if let Some(detail) = e.get("detail").and_then(|d| d.as_str())
                    && !detail.is_empty()
                {
                    text.push_str(&format!(" ({detail})"));
                }
                Some(text)
            })
            .collect();
        if !errors.is_empty() {
            return errors.join("; ");
        }
        if let Some(details) = json.get("details").and_then(|d| d.as_str())
            && !details.is_empty()
        {
            // Docker gives a 401's details the unauthorized code.
            return match status.as_u16() {
                401 => format!("unauthorized: {details}"),
                _ => details.to_string(),
            };
        }
    }
    match body.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(line) => line.chars().take(300).collect(),
        None => format!("HTTP {status}"),
    }
}

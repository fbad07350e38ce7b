//! A local registry for tests (Debian's `docker-registry` on a free loopback port, open, with
//! htpasswd basic auth, or over TLS with a certificate from a throwaway CA), `FaultProxy`, a
//! loopback HTTP proxy that answers 5xx or 429, or content of its own, or cuts a response short
//! on the requests it is told to, so clients' retry and resume paths and their checks of what a
//! registry sends can be tested against the real registry, and
//! `TokenAuthProxy`, a bearer-token front (the distribution token flow) for an open registry.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A `docker-registry` process serving a temporary directory on `127.0.0.1:PORT`; killed on drop.
pub struct TestRegistry {
    child: Child,
    dir: tempfile::TempDir,
    host: String,
}

impl TestRegistry {
    /// Starts an open registry.
    pub fn start() -> anyhow::Result<TestRegistry> {
        Self::start_with(None)
    }

    /// Starts a registry that requires `user` and `password` (htpasswd, bcrypt).
    pub fn start_with_auth(user: &str, password: &str) -> anyhow::Result<TestRegistry> {
        Self::start_with(Some((user, password)))
    }

    /// Starts an open registry that speaks only HTTPS, with `ca`'s server certificate.
    pub fn start_tls(ca: &TestCa) -> anyhow::Result<TestRegistry> {
        Self::start_inner(None, Some(ca))
    }

    fn start_with(auth: Option<(&str, &str)>) -> anyhow::Result<TestRegistry> {
        Self::start_inner(auth, None)
    }

    fn start_inner(
        auth: Option<(&str, &str)>,
        tls: Option<&TestCa>,
    ) -> anyhow::Result<TestRegistry> {
        let dir = tempfile::tempdir_in("/var/tmp")?;
        let port = free_port()?;
        let host = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {host}\n  secret: img-tests\n",
            dir.path().join("data").display()
        );
        if let Some((user, password)) = auth {
            let out = crate::images::run(Command::new("htpasswd").args(["-Bbn", user, password]))?;
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, &out.stdout)?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: img-tests\n    path: {}\n",
                htpasswd.display()
            ));
        }
        if let Some(ca) = tls {
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                ca.server_cert.display(),
                ca.server_key.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("failed to start docker-registry")?;
        let mut registry = TestRegistry { child, dir, host };
        registry.wait_ready()?;
        Ok(registry)
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.host
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .expect("host is 127.0.0.1:PORT")
    }

    /// The registry's log (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Where the registry keeps its data.
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("docker-registry exited with {status}:\n{}", self.log());
            }
            if let Ok(mut s) = TcpStream::connect(&self.host) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let req = format!(
                    "GET /v2/ HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                    self.host
                );
                let mut answer = String::new();
                // A TLS registry answers plain HTTP with Go's `HTTP/1.0 400`: it is up as well.
                if s.write_all(req.as_bytes()).is_ok()
                    && s.read_to_string(&mut answer).is_ok()
                    && answer.starts_with("HTTP/1.")
                {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "docker-registry did not answer on {}:\n{}",
                    self.host,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A throwaway certificate authority and a server certificate it signed for `names` (DNS names
/// and IP addresses), made with openssl: `ca` is what a client must trust.
pub struct TestCa {
    _dir: tempfile::TempDir,
    pub ca: std::path::PathBuf,
    pub server_cert: std::path::PathBuf,
    pub server_key: std::path::PathBuf,
}

impl TestCa {
    pub fn create(names: &[&str]) -> anyhow::Result<TestCa> {
        let dir = tempfile::tempdir_in("/var/tmp")?;
        // The test user's img reads the CA file too.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        let p = |name: &str| dir.path().join(name);
        // One command line per step, split on spaces (no argument has one).
        let openssl = |args: &str| {
            crate::images::run(
                Command::new("openssl")
                    .args(args.split_whitespace())
                    .current_dir(dir.path()),
            )
        };
        // P-256 keys: quick to make, and accepted by rustls and Go alike.
        // A name of its own: two test CAs with one name would look like one CA whose
        // signature does not verify, not like an unknown one.
        let ca_name = format!(
            "img-test-CA-{}",
            dir.path().file_name().unwrap_or_default().to_string_lossy()
        );
        openssl(&format!(
            "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key \
             -out ca.pem -days 2 -subj /CN={ca_name} \
             -addext basicConstraints=critical,CA:TRUE \
             -addext keyUsage=critical,keyCertSign,cRLSign"
        ))?;
        let first = names.first().copied().unwrap_or("localhost");
        openssl(&format!(
            "req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key \
             -out server.csr -subj /CN={first}"
        ))?;
        let san: Vec<String> = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(_) => format!("IP:{n}"),
                Err(_) => format!("DNS:{n}"),
            })
            .collect();
        std::fs::write(
            p("server.ext"),
            format!(
                "subjectAltName={}\nbasicConstraints=CA:FALSE\n\
                 keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
                san.join(",")
            ),
        )?;
        openssl(
            "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
             -out server.pem -days 2 -extfile server.ext",
        )?;
        for f in ["ca.pem", "server.pem", "server.key"] {
            std::fs::set_permissions(p(f), std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        }
        Ok(TestCa {
            ca: p("ca.pem"),
            server_cert: p("server.pem"),
            server_key: p("server.key"),
            _dir: dir,
        })
    }
}

/// A port nothing listens on right now (the kernel's pick for an ephemeral bind).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// What the proxy does to a request a rule matches.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answers with this status and an empty body, without asking the registry.
    Status(u16),
    /// Forwards the request, then closes the connection after this many bytes of the response
    /// body.
    DropAfter(usize),
    /// Forwards the request and sets this response header (name, value) on the answer.
    SetHeader(&'static str, String),
    /// Answers with this status, these headers and this body, without asking the registry: a
    /// throttling answer (`429` with `Retry-After`), or content the registry would not hold.
    Answer {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
    },
}

/// Which requests get a fault, and how many times.
#[derive(Clone, Debug)]
pub struct Rule {
    pub method: &'static str,
    /// A substring of the request target (path and query).
    pub path_contains: String,
    pub fault: Fault,
    pub times: usize,
}

/// One request the proxy saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub target: String,
    /// The Range header, if any.
    pub range: Option<String>,
    /// The fault applied, if any.
    pub fault: Option<Fault>,
}

/// A loopback HTTP/1.1 proxy in front of `upstream` that applies `Rule`s. Each client connection
/// carries one request (the proxy asks both sides to close), which keeps the relay simple.
pub struct FaultProxy {
    server: Listener,
    rules: Arc<Mutex<Vec<Rule>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// A loopback listener that hands each connection to `handle` on a thread of its own, until it
/// is dropped: the accept loop both proxies run.
struct Listener {
    host: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Listener {
    fn start(handle: impl Fn(TcpStream) + Send + Sync + 'static) -> anyhow::Result<Listener> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let host = listener.local_addr()?.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let handle = Arc::new(handle);
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let handle = handle.clone();
                    std::thread::spawn(move || handle(conn));
                }
            })
        };
        Ok(Listener {
            host,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.host);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl FaultProxy {
    pub fn start(upstream: &str, rules: Vec<Rule>) -> anyhow::Result<FaultProxy> {
        let rules = Arc::new(Mutex::new(rules));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let server = {
            let (rules, seen) = (rules.clone(), seen.clone());
            let upstream = upstream.to_string();
            Listener::start(move |conn| {
                let _ = serve(conn, &upstream, &rules, &seen);
            })?
        };
        Ok(FaultProxy {
            server,
            rules,
            seen,
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> &str {
        &self.server.host
    }

    pub fn set_rules(&self, rules: Vec<Rule>) {
        *self.rules.lock().unwrap() = rules;
    }

    /// Every request so far; `clear_seen` starts a new record.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn clear_seen(&self) {
        self.seen.lock().unwrap().clear();
    }
}

/// One request to the token endpoint, as `TokenAuthProxy` saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    /// The `scope` parameters, decoded (`repository:NAME:pull,push`).
    pub scopes: Vec<String>,
    pub service: Option<String>,
    pub account: Option<String>,
    /// Whether the basic credentials were right (and a token was issued).
    pub granted: bool,
}

/// A cross-repository mount request (`POST /v2/TARGET/blobs/uploads/?mount=DIGEST&from=SOURCE`)
/// and what `TokenAuthProxy` made of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountRequest {
    pub target: String,
    pub from: String,
    pub digest: String,
    /// The scopes of the token it carried.
    pub scopes: Vec<String>,
    /// Whether it went to the registry as a mount: only when the token also grants pull on
    /// `from`; otherwise `mount` and `from` were removed and it went as a plain upload start,
    /// as distribution does.
    pub mounted: bool,
}

/// What the token front knows: the one account, the tokens it issued and the scopes each grants,
/// every token request, and the mount requests and everything forwarded to the registry.
struct TokenState {
    user: String,
    password: String,
    issued: std::collections::HashMap<String, Vec<String>>,
    requests: Vec<TokenRequest>,
    refused: Vec<String>,
    mounts: Vec<MountRequest>,
    forwarded: Vec<String>,
}

/// A loopback front for an open registry that demands bearer tokens the way Docker Hub and
/// distribution's token auth do: a request without a valid `Authorization: Bearer` for its
/// repository and action (pull for GET and HEAD, push otherwise) gets 401 and a
/// `WWW-Authenticate: Bearer realm="http://HOST/token",service="test-registry",scope=...`
/// challenge; `GET /token` checks basic credentials and issues a token for the scopes asked,
/// or refuses with 401 and `TOKEN_REFUSAL` in a distribution error body. A mount request goes to
/// the registry as a mount only when its token grants pull on the source (see `MountRequest`).
pub struct TokenAuthProxy {
    server: Listener,
    state: Arc<Mutex<TokenState>>,
}

/// The `service` the challenge names.
pub const TOKEN_SERVICE: &str = "test-registry";

/// The message of the token endpoint's 401, under the code `UNAUTHORIZED`.
pub const TOKEN_REFUSAL: &str = "the test token server knows no such user and password";

impl TokenAuthProxy {
    pub fn start(upstream: &str, user: &str, password: &str) -> anyhow::Result<TokenAuthProxy> {
        let state = Arc::new(Mutex::new(TokenState {
            user: user.to_string(),
            password: password.to_string(),
            issued: Default::default(),
            requests: Vec::new(),
            refused: Vec::new(),
            mounts: Vec::new(),
            forwarded: Vec::new(),
        }));
        let server = {
            let state = state.clone();
            let upstream = upstream.to_string();
            Listener::start(move |conn| {
                // The realm names this proxy: the address the client reached.
                let Ok(host) = conn.local_addr().map(|a| a.to_string()) else {
                    return;
                };
                let _ = serve_token_auth(conn, &upstream, &host, &state);
            })?
        };
        Ok(TokenAuthProxy { server, state })
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> &str {
        &self.server.host
    }

    /// Every request to the token endpoint so far.
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.state.lock().unwrap().requests.clone()
    }

    /// `METHOD TARGET` of every registry request refused for want of a valid token.
    pub fn refused(&self) -> Vec<String> {
        self.state.lock().unwrap().refused.clone()
    }

    /// Every cross-repository mount request that had a valid token, in order.
    pub fn mounts(&self) -> Vec<MountRequest> {
        self.state.lock().unwrap().mounts.clone()
    }

    /// `METHOD TARGET` of every request forwarded to the registry, as forwarded.
    pub fn forwarded(&self) -> Vec<String> {
        self.state.lock().unwrap().forwarded.clone()
    }
}

fn serve_token_auth(
    client: TcpStream,
    upstream: &str,
    host: &str,
    state: &Mutex<TokenState>,
) -> anyhow::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(client.try_clone()?);
    let mut request = Request::read(&mut reader)?;
    let target = request.target.clone();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    if path == "/token" {
        return issue_token(client, &request, query, state);
    }
    // /v2/NAME/{manifests,blobs,tags}/...: the repository and the action the request needs.
    let needed = path.strip_prefix("/v2/").and_then(|rest| {
        ["/manifests/", "/blobs/", "/tags/"]
            .iter()
            .find_map(|m| rest.find(m).map(|i| &rest[..i]))
            .map(|repository| {
                let action = match request.method.as_str() {
                    "GET" | "HEAD" => "pull",
                    _ => "push",
                };
                (repository.to_string(), action)
            })
    });
    let token = request
        .header("Authorization")
        .and_then(|a| a.strip_prefix("Bearer ").map(str::to_string));
    let grants = |scopes: &[String], repository: &str, action: &str| {
        scopes.iter().any(|scope| {
            scope
                .strip_prefix("repository:")
                .and_then(|s| s.rsplit_once(':'))
                .is_some_and(|(name, actions)| {
                    name == repository && actions.split(',').any(|a| a == action)
                })
        })
    };
    let scopes = {
        let state = state.lock().unwrap();
        token.as_ref().and_then(|t| state.issued.get(t)).cloned()
    };
    let allowed = match (&scopes, &needed) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(scopes), Some((repository, action))) => grants(scopes, repository, action),
    };
    if allowed {
        let scopes = scopes.unwrap_or_default();
        let params: Vec<(String, String)> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (percent_decode(k), percent_decode(v)))
            .collect();
        let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v);
        if let (Some((repository, _)), true, Some(digest), Some(from)) = (
            &needed,
            request.method == "POST" && path.ends_with("/blobs/uploads/"),
            param("mount"),
            param("from"),
        ) {
            let mounted = grants(&scopes, from, "pull");
            state.lock().unwrap().mounts.push(MountRequest {
                target: repository.clone(),
                from: from.clone(),
                digest: digest.clone(),
                scopes: scopes.clone(),
                mounted,
            });
            if !mounted {
                // distribution starts a plain upload when the mount is not allowed.
                request.line = request.line.replacen(&target, path, 1);
                request.target = path.to_string();
            }
        }
        state
            .lock()
            .unwrap()
            .forwarded
            .push(format!("{} {}", request.method, request.target));
        return forward(client, reader, upstream, &request, None);
    }
    state
        .lock()
        .unwrap()
        .refused
        .push(format!("{} {}", request.method, request.target));
    let mut challenge = format!("Bearer realm=\"http://{host}/token\",service=\"{TOKEN_SERVICE}\"");
    if let Some((repository, action)) = &needed {
        let actions = if *action == "pull" {
            "pull"
        } else {
            "pull,push"
        };
        challenge.push_str(&format!(",scope=\"repository:{repository}:{actions}\""));
    }
    let body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
    answer(
        client,
        "401 Unauthorized",
        &[
            ("WWW-Authenticate", challenge),
            ("Content-Type", "application/json".to_string()),
            (
                "Docker-Distribution-API-Version",
                "registry/2.0".to_string(),
            ),
        ],
        body,
    )
}

fn issue_token(
    client: TcpStream,
    request: &Request,
    query: &str,
    state: &Mutex<TokenState>,
) -> anyhow::Result<()> {
    let params: Vec<(String, String)> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect();
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut state = state.lock().unwrap();
    let expected = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{}:{}", state.user, state.password)
        )
    );
    let granted = request.header("Authorization").as_deref() == Some(expected.as_str());
    let scopes: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_string))
        .filter(|v| !v.is_empty())
        .collect();
    state.requests.push(TokenRequest {
        scopes: scopes.clone(),
        service: param("service"),
        account: param("account"),
        granted,
    });
    if !granted {
        drop(state);
        let body = serde_json::json!({
            "errors": [{ "code": "UNAUTHORIZED", "message": TOKEN_REFUSAL }],
        });
        return answer(
            client,
            "401 Unauthorized",
            &[("Content-Type", "application/json".to_string())],
            body.to_string().as_bytes(),
        );
    }
    let token = format!("img-test-token-{}", state.issued.len() + 1);
    state.issued.insert(token.clone(), scopes);
    drop(state);
    let body = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": 300,
    });
    answer(
        client,
        "200 OK",
        &[("Content-Type", "application/json".to_string())],
        body.to_string().as_bytes(),
    )
}

/// `%3A` to `:` and `+` to a space, as in a URL query.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A request head as a proxy reads it.
struct Request {
    line: String,
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn read(reader: &mut impl BufRead) -> anyhow::Result<Request> {
        let head = read_head(reader)?;
        let mut lines = head.lines();
        let line = lines.next().unwrap_or_default().to_string();
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        Ok(Request {
            line,
            method,
            target,
            headers,
        })
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }
}

fn serve(
    client: TcpStream,
    upstream: &str,
    rules: &Mutex<Vec<Rule>>,
    seen: &Mutex<Vec<Seen>>,
) -> anyhow::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(client.try_clone()?);
    let request = Request::read(&mut reader)?;
    let fault = {
        let mut rules = rules.lock().unwrap();
        let found = rules.iter_mut().find(|r| {
            r.times > 0 && r.method == request.method && request.target.contains(&r.path_contains)
        });
        found.map(|r| {
            r.times -= 1;
            r.fault.clone()
        })
    };
    seen.lock().unwrap().push(Seen {
        method: request.method.clone(),
        target: request.target.clone(),
        range: request.header("Range"),
        fault: fault.clone(),
    });
    match fault {
        Some(Fault::Status(code)) => return answer(client, &format!("{code} Injected"), &[], b""),
        Some(Fault::Answer {
            status,
            headers,
            body,
        }) => return answer(client, &format!("{status} Injected"), &headers, &body),
        _ => {}
    }
    forward(client, reader, upstream, &request, fault)
}

/// Answers the client directly and closes the connection.
fn answer(
    mut client: TcpStream,
    status: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> anyhow::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    client.write_all(head.as_bytes())?;
    client.write_all(body)?;
    client.flush()?;
    let _ = client.shutdown(Shutdown::Both);
    Ok(())
}

/// Relays `request` (its body still in `reader`) to `upstream` and the answer back, applying a
/// forwarding `fault`.
fn forward(
    mut client: TcpStream,
    mut reader: BufReader<TcpStream>,
    upstream: &str,
    request: &Request,
    fault: Option<Fault>,
) -> anyhow::Result<()> {
    let mut up = TcpStream::connect(upstream)?;
    up.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut forwarded = format!("{}\r\n", request.line);
    for (k, v) in &request.headers {
        if !k.eq_ignore_ascii_case("connection") {
            forwarded.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    forwarded.push_str("Connection: close\r\n\r\n");
    up.write_all(forwarded.as_bytes())?;
    if let Some(len) = request
        .header("Content-Length")
        .and_then(|l| l.parse::<u64>().ok())
    {
        std::io::copy(&mut (&mut reader).take(len), &mut up)?;
    } else if request
        .header("Transfer-Encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        relay_chunked(&mut reader, &mut up)?;
    }
    up.flush()?;

    // The upstream closes after its answer, so everything up to EOF is the response.
    let mut up_reader = BufReader::new(up);
    let mut response_head = read_head(&mut up_reader)?;
    if let Some(Fault::SetHeader(name, value)) = &fault {
        let kept: Vec<&str> = response_head
            .split("\r\n")
            .filter(|l| {
                !l.split_once(':')
                    .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            })
            .collect();
        // The head ends with an empty line; the new header goes before it.
        let end = kept.len().saturating_sub(2);
        let mut lines: Vec<String> = kept.iter().map(|l| l.to_string()).collect();
        lines.insert(end, format!("{name}: {value}"));
        response_head = lines.join("\r\n");
    }
    client.write_all(response_head.as_bytes())?;
    match fault {
        Some(Fault::DropAfter(n)) => {
            std::io::copy(&mut (&mut up_reader).take(n as u64), &mut client)?;
            client.flush()?;
            // The client sees the connection end before Content-Length bytes: a dropped link.
            let _ = client.shutdown(Shutdown::Both);
        }
        _ => {
            std::io::copy(&mut up_reader, &mut client)?;
            client.flush()?;
            let _ = client.shutdown(Shutdown::Both);
        }
    }
    Ok(())
}

/// The request or response head up to and including the blank line.
fn read_head(reader: &mut impl BufRead) -> anyhow::Result<String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            bail!("connection closed inside a message head");
        }
        head.push_str(&line);
        if line == "\r\n" || line == "\n" {
            return Ok(head);
        }
    }
}

fn relay_chunked(reader: &mut impl BufRead, out: &mut impl Write) -> anyhow::Result<()> {
    loop {
        let mut size_line = String::new();
        reader.read_line(&mut size_line)?;
        out.write_all(size_line.as_bytes())?;
        let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or("0"), 16)?;
        if size == 0 {
            // Trailers, then the blank line.
            loop {
                let mut line = String::new();
                reader.read_line(&mut line)?;
                out.write_all(line.as_bytes())?;
                if line == "\r\n" || line.is_empty() {
                    return Ok(());
                }
            }
        }
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk)?;
        out.write_all(&chunk)?;
    }
}

/// Whether `path` holds any file whose name starts with `.tmp-` (a partial blob).
pub fn has_temp_files(path: &Path) -> bool {
    walkdir::WalkDir::new(path)
        .into_iter()
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
}

//! A local registry for tests (Debian's `docker-registry` on a free loopback port, open or with
//! htpasswd basic auth) and `FaultProxy`, a loopback HTTP proxy that answers 5xx or cuts a
//! response short on the requests it is told to, so clients' retry and resume paths can be
//! tested against the real registry.

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

    fn start_with(auth: Option<(&str, &str)>) -> anyhow::Result<TestRegistry> {
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
                if s.write_all(req.as_bytes()).is_ok()
                    && s.read_to_string(&mut answer).is_ok()
                    && answer.starts_with("HTTP/1.1")
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
    host: String,
    rules: Arc<Mutex<Vec<Rule>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    pub fn start(upstream: &str, rules: Vec<Rule>) -> anyhow::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let host = listener.local_addr()?.to_string();
        let rules = Arc::new(Mutex::new(rules));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (rules, seen, stop) = (rules.clone(), seen.clone(), stop.clone());
            let upstream = upstream.to_string();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (rules, seen, upstream) = (rules.clone(), seen.clone(), upstream.clone());
                    std::thread::spawn(move || {
                        let _ = serve(conn, &upstream, &rules, &seen);
                    });
                }
            })
        };
        Ok(FaultProxy {
            host,
            rules,
            seen,
            stop,
            thread: Some(thread),
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> &str {
        &self.host
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

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.host);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
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
    let mut client = client;
    let head = read_head(&mut reader)?;
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or_default().to_string();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let fault = {
        let mut rules = rules.lock().unwrap();
        let found = rules
            .iter_mut()
            .find(|r| r.times > 0 && r.method == method && target.contains(&r.path_contains));
        found.map(|r| {
            r.times -= 1;
            r.fault.clone()
        })
    };
    seen.lock().unwrap().push(Seen {
        method: method.clone(),
        target: target.clone(),
        range: header("Range"),
        fault: fault.clone(),
    });
    if let Some(Fault::Status(code)) = fault {
        let answer =
            format!("HTTP/1.1 {code} Injected\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        client.write_all(answer.as_bytes())?;
        let _ = client.shutdown(Shutdown::Both);
        return Ok(());
    }

    let mut up = TcpStream::connect(upstream)?;
    up.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut forwarded = format!("{request_line}\r\n");
    for (k, v) in &headers {
        if !k.eq_ignore_ascii_case("connection") {
            forwarded.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    forwarded.push_str("Connection: close\r\n\r\n");
    up.write_all(forwarded.as_bytes())?;
    if let Some(len) = header("Content-Length").and_then(|l| l.parse::<u64>().ok()) {
        std::io::copy(&mut (&mut reader).take(len), &mut up)?;
    } else if header("Transfer-Encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
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

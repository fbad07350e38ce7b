//! Unit tests of the registry client without a registry: insecure-host rules, platforms and
//! index selection, blob sources, bearer challenges, the config file and retry decisions.

use std::str::FromStr;
use std::time::Duration;

use oci_spec::image::{ImageIndex, ImageIndexBuilder};

use super::auth::{challenge_param, read_config, write_config};
use super::client::{Failure, MAX_RETRY_AFTER, retry_wait};
use super::http::{human, retry_after, status_failure};
use super::*;

#[test]
fn loopback_and_listed_hosts_are_insecure_others_not() {
    let listed = vec!["reg.example:5000".to_string(), "plain.example".to_string()];
    for host in [
        "localhost",
        "localhost:5000",
        "127.0.0.1:5000",
        "127.3.4.5",
        "[::1]:5000",
        "reg.example:5000",
        "plain.example:443",
    ] {
        assert!(is_insecure_host(host, &listed), "{host}");
    }
    for host in ["docker.io", "reg.example:5001", "10.0.0.1:5000", "ghcr.io"] {
        assert!(!is_insecure_host(host, &listed), "{host}");
    }
}

#[test]
fn docker_hub_credentials_live_under_the_index_url() {
    assert_eq!(registry_key("docker.io"), "https://index.docker.io/v1/");
    assert_eq!(registry_key("127.0.0.1:5000"), "127.0.0.1:5000");
}

fn index(entries: &[(&str, &str, Option<&str>, char)]) -> ImageIndex {
    let manifests = entries
        .iter()
        .map(|(os, arch, variant, hex)| {
            let mut platform = oci_spec::image::PlatformBuilder::default()
                .os(*os)
                .architecture(*arch);
            if let Some(v) = variant {
                platform = platform.variant(*v);
            }
            oci_spec::image::DescriptorBuilder::default()
                .media_type(oci_spec::image::MediaType::ImageManifest)
                .size(100u64)
                .digest(
                    oci_spec::image::Digest::from_str(&format!(
                        "sha256:{}",
                        hex.to_string().repeat(64)
                    ))
                    .unwrap(),
                )
                .platform(platform.build().unwrap())
                .build()
                .unwrap()
        })
        .collect::<Vec<_>>();
    ImageIndexBuilder::default()
        .schema_version(2u32)
        .manifests(manifests)
        .build()
        .unwrap()
}

#[test]
fn index_entry_is_chosen_by_os_architecture_and_variant() {
    let idx = index(&[
        ("linux", "arm", Some("v7"), 'a'),
        ("linux", "arm", Some("v6"), 'b'),
        ("linux", "amd64", None, 'c'),
        ("linux", "arm64", None, 'd'),
        ("unknown", "unknown", None, 'e'),
    ]);
    let pick = |p: &str| {
        select_platform(&idx, &p.parse().unwrap()).map(|d| d.digest().digest()[..1].to_string())
    };
    assert_eq!(pick("linux/amd64").as_deref(), Some("c"));
    assert_eq!(pick("linux/arm/v6").as_deref(), Some("b"));
    assert_eq!(pick("linux/arm").as_deref(), Some("a"));
    // arm64's v8 is implied when the index leaves the variant out.
    assert_eq!(pick("linux/arm64/v8").as_deref(), Some("d"));
    assert_eq!(pick("linux/s390x"), None);
    assert_eq!(pick("windows/amd64"), None);
}

#[test]
fn blob_sources_offer_other_repositories_of_the_same_registry_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = BlobSources::open(dir.path());
    s.record("reg:5000", "a", ["sha256:1"]);
    s.record("other:5000", "b", ["sha256:1"]);
    s.record("reg:5000", "c", ["sha256:1", "sha256:2"]);
    s.save().unwrap();
    let s = BlobSources::open(dir.path());
    assert_eq!(s.candidates("reg:5000", "x", "sha256:1"), ["c", "a"]);
    assert_eq!(s.candidates("reg:5000", "c", "sha256:1"), ["a"]);
    assert!(s.candidates("reg:5000", "x", "sha256:3").is_empty());
}

#[test]
fn an_unreadable_sources_record_is_an_empty_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("registry-sources.json"), "{not json").unwrap();
    assert!(
        BlobSources::open(dir.path())
            .candidates("r", "x", "sha256:1")
            .is_empty()
    );
}

#[test]
fn bearer_challenge_parameters_are_read() {
    let c = r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a:pull""#;
    assert_eq!(
        challenge_param(c, "realm").as_deref(),
        Some("https://auth.example/token")
    );
    assert_eq!(
        challenge_param(c, "service").as_deref(),
        Some("registry.example")
    );
    assert_eq!(challenge_param(c, "error"), None);
}

#[test]
fn config_file_keeps_other_fields_and_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("docker/config.json");
    let mut config = read_config(&path).unwrap();
    assert!(config.is_empty());
    config.insert("credsStore".into(), "pass".into());
    write_config(&path, &config).unwrap();
    let again = read_config(&path).unwrap();
    assert_eq!(again["credsStore"], "pass");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    std::fs::write(&path, "[]").unwrap();
    assert!(matches!(
        read_config(&path),
        Err(RegistryError::Config { .. })
    ));
}

fn fatal(f: Failure) -> RegistryError {
    match f {
        Failure::Fatal(e) => e,
        other => panic!("expected a fatal error, got {other:?}"),
    }
}

/// How `status_failure` sorts the answer `one_request_with` gives.
fn failure_of(status: &'static str, headers: &'static str, body: &'static str) -> Failure {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (addr, server) = one_request_with(status, headers, body);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let failure = runtime.block_on(async {
        let response = reqwest::Client::new()
            .get(format!("http://{addr}/v2/a/manifests/1"))
            .send()
            .await
            .unwrap();
        status_failure("reg.example", "manifest of a:1", response).await
    });
    server.join().unwrap();
    failure
}

#[test]
fn throttled_and_failing_answers_are_retried_by_status_whatever_the_body_says() {
    // Before, only a body with the code TOOMANYREQUESTS made a 429 worth another try.
    let denied = r#"{"errors":[{"code":"DENIED","message":"slow down"}]}"#;
    match failure_of("429 Too Many Requests", "Retry-After: 3\r\n", denied) {
        Failure::Status {
            status,
            retry_after,
            message,
            ..
        } => {
            assert_eq!(status.as_u16(), 429);
            assert_eq!(retry_after, Some(Duration::from_secs(3)));
            assert_eq!(message, "denied: slow down");
        }
        other => panic!("429 is not retried: {other:?}"),
    }
    for status in [
        "503 Service Unavailable",
        "500 Internal Server Error",
        "408 Request Timeout",
    ] {
        match failure_of(status, "", "") {
            Failure::Status { retry_after, .. } => assert_eq!(retry_after, None, "{status}"),
            other => panic!("{status} is not retried: {other:?}"),
        }
    }
    assert!(matches!(
        fatal(failure_of("401 Unauthorized", "", "")),
        RegistryError::Unauthorized { .. }
    ));
    assert!(matches!(
        fatal(failure_of("404 Not Found", "", "")),
        RegistryError::NotFound { .. }
    ));
    let bad = fatal(failure_of("400 Bad Request", "", denied));
    assert!(matches!(bad, RegistryError::Request { .. }), "{bad}");
    assert!(bad.to_string().contains("denied: slow down"), "{bad}");
}

#[test]
fn retry_after_is_read_as_seconds_or_an_http_date_and_capped() {
    let headers = |value: &str| {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, value.parse().unwrap());
        h
    };
    // 1_000_000_000 is Sun, 09 Sep 2001 01:46:40 GMT.
    let now = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    assert_eq!(
        retry_after(&headers("120"), now),
        Some(Duration::from_secs(120))
    );
    assert_eq!(
        retry_after(&headers("Sun, 09 Sep 2001 01:47:10 GMT"), now),
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        retry_after(&headers("Sun, 09 Sep 2001 01:00:00 GMT"), now),
        Some(Duration::ZERO)
    );
    assert_eq!(retry_after(&headers("soon"), now), None);
    assert_eq!(retry_after(&reqwest::header::HeaderMap::new(), now), None);

    let backoff = Duration::from_millis(250);
    assert_eq!(retry_wait(None, backoff), backoff);
    assert_eq!(
        retry_wait(Some(Duration::from_secs(2)), backoff),
        Duration::from_secs(2)
    );
    assert_eq!(
        retry_wait(Some(Duration::from_secs(3600)), backoff),
        MAX_RETRY_AFTER
    );
    assert_eq!(human(Duration::ZERO), "0s");
    assert_eq!(human(Duration::from_millis(250)), "250ms");
    assert_eq!(human(Duration::from_secs(1)), "1s");
    assert_eq!(human(Duration::from_millis(1500)), "1.5s");
}

#[test]
fn retries_are_bounded_and_the_last_error_names_the_status_and_the_attempts() {
    let options = Options {
        max_attempts: 3,
        backoff: Duration::from_millis(1),
        ..Options::default()
    };
    let registry = Registry::new(options, Reporter::Quiet).unwrap();
    let tries = std::sync::atomic::AtomicU32::new(0);
    let result: Result<(), RegistryError> =
        registry.block_on(registry.retry("manifest of a:1", || async {
            tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(Failure::Status {
                registry: "127.0.0.1:5000".into(),
                status: reqwest::StatusCode::TOO_MANY_REQUESTS,
                retry_after: Some(Duration::ZERO),
                message: String::new(),
            })
        }));
    assert_eq!(tries.into_inner(), 3);
    let err = result.unwrap_err().to_string();
    assert_eq!(
        err,
        "manifest of a:1: gave up after 3 attempts: registry 127.0.0.1:5000 answered 429 Too \
         Many Requests"
    );
}

#[test]
fn unauthorized_message_names_the_registry_and_the_fix() {
    let e = RegistryError::Unauthorized {
        registry: "127.0.0.1:5000".into(),
        what: "manifest of 127.0.0.1:5000/a:latest".into(),
    };
    let msg = e.to_string();
    assert!(
        msg.contains("127.0.0.1:5000 refused the credentials"),
        "{msg}"
    );
    assert!(msg.contains("img login 127.0.0.1:5000"), "{msg}");
}

/// An `Arrival` fed from a temporary file the way a download feeds it.
fn arriving(bytes: &[u8]) -> (tempfile::NamedTempFile, super::apply::Arrival) {
    use std::io::Write;
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(bytes).unwrap();
    let arrival = super::apply::Arrival::default();
    arrival.restart(Some(file.reopen().unwrap()));
    (file, arrival)
}

#[test]
fn a_follower_reads_what_has_arrived_and_ends_only_once_the_blob_is_stored() {
    use std::io::Read;
    let (_file, arrival) = arriving(b"hello world");
    arrival.flushed(5);
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut all = Vec::new();
            arrival.follow().read_to_end(&mut all).map(|_| all)
        });
        // The reader has the first five bytes and waits: neither more bytes nor an end yet.
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!reader.is_finished());
        arrival.flushed(11);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!reader.is_finished(), "ended before the blob was stored");
        arrival.end(Ok(11));
        assert_eq!(reader.join().unwrap().unwrap(), b"hello world");
    });
}

#[test]
fn a_follower_fails_when_the_blob_fails_verification_even_with_every_byte_read() {
    use std::io::Read;
    let (_file, arrival) = arriving(b"hello world");
    arrival.flushed(11);
    let mut follow = arrival.follow();
    let mut buf = [0u8; 11];
    follow.read_exact(&mut buf).unwrap();
    arrival.end(Err("blob sha256:ab has digest sha256:cd".to_string()));
    let err = follow.read(&mut buf).unwrap_err();
    assert!(err.to_string().contains("has digest"), "{err}");
}

#[test]
fn a_follower_fails_when_the_download_starts_over_in_a_new_file() {
    use std::io::Read;
    let (_file, arrival) = arriving(b"hello world");
    arrival.flushed(11);
    let mut follow = arrival.follow();
    let mut buf = [0u8; 4];
    follow.read_exact(&mut buf).unwrap();
    let again = tempfile::NamedTempFile::new().unwrap();
    arrival.restart(Some(again.reopen().unwrap()));
    let err = follow.read(&mut buf).unwrap_err();
    assert!(err.to_string().contains("started over"), "{err}");
    // The download's end is still what the applier waits for.
    arrival.end(Ok(11));
    assert_eq!(arrival.wait(), Ok(11));
}

#[test]
fn a_helper_without_credentials_for_the_registry_means_anonymous() {
    let e = docker_credential::CredentialRetrievalError::HelperFailure {
        helper: "docker-credential-pass".into(),
        stdout: "credentials not found in native keychain\n".into(),
        stderr: String::new(),
    };
    assert_eq!(
        super::auth::helper_error("r:5000", "docker-credential-pass", true, e).unwrap(),
        None
    );
}

#[test]
fn a_failing_helper_is_named_with_what_it_printed() {
    let e = docker_credential::CredentialRetrievalError::HelperFailure {
        helper: "docker-credential-pass".into(),
        stdout: String::new(),
        stderr: "gpg: decryption failed\nno secret key\n".into(),
    };
    let msg = super::auth::helper_error("r:5000", "docker-credential-pass", true, e)
        .unwrap_err()
        .to_string();
    assert_eq!(
        msg,
        "credentials for r:5000: `docker-credential-pass get` failed: \
         gpg: decryption failed no secret key"
    );
    let talk = |on_path| {
        super::auth::helper_error(
            "r:5000",
            "docker-credential-nope",
            on_path,
            docker_credential::CredentialRetrievalError::HelperCommunicationError,
        )
        .unwrap_err()
        .to_string()
    };
    assert_eq!(
        talk(false),
        "credentials for r:5000: could not run `docker-credential-nope get`: \
         docker-credential-nope is not on PATH"
    );
    assert_eq!(
        talk(true),
        "credentials for r:5000: `docker-credential-nope get` exited before reading which \
         registry it was asked for"
    );
}

/// An error shaped like reqwest's for a failed handshake: the rustls error inside
/// `io::Error`s inside another error.
#[derive(Debug)]
struct Connect(std::io::Error);

impl std::fmt::Display for Connect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("error sending request")
    }
}

impl std::error::Error for Connect {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[test]
fn an_untrusted_certificate_is_a_tls_error_naming_the_host() {
    // As reqwest 0.13 reports it: io::Error(Other, io::Error(InvalidData, rustls::Error)).
    let e = Connect(std::io::Error::other(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
    )));
    let err = super::client::tls_failure("reg.test:5000", &e).expect("a TLS failure");
    let msg = err.to_string();
    assert!(
        msg.starts_with("TLS with reg.test:5000 failed: invalid peer certificate: UnknownIssuer"),
        "{msg}"
    );
    assert!(msg.contains("SSL_CERT_FILE"), "{msg}");

    let refused = Connect(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
    assert!(super::client::tls_failure("reg.test:5000", &refused).is_none());
}

#[test]
fn only_a_bearer_challenge_with_a_realm_names_a_token_server() {
    use super::token::Challenge;
    assert_eq!(
        Challenge::parse(r#"Bearer realm="https://auth.example/token",service="reg""#),
        Some(Challenge {
            realm: "https://auth.example/token".into(),
            service: Some("reg".into()),
        })
    );
    assert_eq!(
        Challenge::parse(r#"bearer realm="http://a/t""#).map(|c| c.service),
        Some(None)
    );
    assert_eq!(Challenge::parse(r#"Basic realm="img-tests""#), None);
    assert_eq!(Challenge::parse(r#"Bearer service="reg""#), None);
}

#[test]
fn a_token_servers_refusal_is_told_in_its_own_words() {
    use super::token::refusal_text;
    let unauthorized = reqwest::StatusCode::UNAUTHORIZED;
    assert_eq!(
        refusal_text(
            unauthorized,
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":"no such user"},{"code":"DENIED","message":""}]}"#
        ),
        "unauthorized: authentication required (no such user); denied"
    );
    assert_eq!(
        refusal_text(
            unauthorized,
            r#"{"details":"incorrect username or password"}"#
        ),
        "unauthorized: incorrect username or password"
    );
    assert_eq!(
        refusal_text(
            reqwest::StatusCode::FORBIDDEN,
            "\n  access denied by policy\nmore\n"
        ),
        "access denied by policy"
    );
    assert_eq!(refusal_text(unauthorized, ""), "HTTP 401 Unauthorized");
}

/// A loopback server that answers one request with `status` and `body`, and hands back the
/// request it read (head and body).
fn one_request(
    status: &'static str,
    body: &'static str,
) -> (String, std::thread::JoinHandle<String>) {
    one_request_with(status, "", body)
}

/// `one_request` with more header lines (each ending in CRLF) in the answer.
fn one_request_with(
    status: &'static str,
    headers: &'static str,
    body: &'static str,
) -> (String, std::thread::JoinHandle<String>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handle = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut request = String::new();
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap();
            }
            request.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let mut content = vec![0; length];
        reader.read_exact(&mut content).unwrap();
        request.push_str(&String::from_utf8(content).unwrap());
        write!(
            conn,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        request
    });
    (addr, handle)
}

/// Asks the server `one_request` started for a token for two repositories with `credentials`.
fn ask_token(
    addr: &str,
    credentials: Option<Credentials>,
) -> Result<super::token::Token, RegistryError> {
    // reqwest's rustls needs a process-wide provider; another test may have installed it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let challenge = super::token::Challenge {
        realm: format!("http://{addr}/token"),
        service: Some("reg".into()),
    };
    let scopes = [
        "repository:a/b:pull,push".to_string(),
        "repository:c/d:pull".to_string(),
    ];
    runtime
        .block_on(super::token::fetch(
            &reqwest::Client::new(),
            "reg.example",
            &challenge,
            &scopes,
            credentials.as_ref(),
        ))
        .map_err(fatal)
}

#[test]
fn an_identity_token_is_posted_as_an_oauth_refresh_token() {
    let (addr, server) = one_request("200 OK", r#"{"access_token":"at","expires_in":300}"#);
    let token = ask_token(&addr, Some(Credentials::IdentityToken("rt-1".into()))).unwrap();
    assert_eq!(token.value, "at");
    let request = server.join().unwrap();
    assert!(request.starts_with("POST /token HTTP/1.1\r\n"), "{request}");
    assert!(
        request.contains("content-type: application/x-www-form-urlencoded\r\n"),
        "{request}"
    );
    let form = request.rsplit("\r\n").next().unwrap();
    assert_eq!(
        form,
        "grant_type=refresh_token&refresh_token=rt-1&client_id=docker\
         &scope=repository%3Aa%2Fb%3Apull%2Cpush+repository%3Ac%2Fd%3Apull&service=reg"
    );
}

#[test]
fn a_password_is_basic_auth_on_a_get_with_one_scope_parameter_each() {
    let (addr, server) = one_request("200 OK", r#"{"token":"t","expires_in":1}"#);
    let basic = Credentials::Basic {
        username: "u".into(),
        password: "p".into(),
    };
    let token = ask_token(&addr, Some(basic)).unwrap();
    assert_eq!(token.value, "t");
    // Docker's minimum lifetime, not the one second the server gave.
    assert!(token.fresh());
    let request = server.join().unwrap();
    assert!(
        request.starts_with(
            "GET /token?scope=repository%3Aa%2Fb%3Apull%2Cpush&scope=repository%3Ac%2Fd%3Apull\
             &service=reg&account=u HTTP/1.1\r\n"
        ),
        "{request}"
    );
    assert!(
        request.contains("authorization: Basic dTpw\r\n"),
        "{request}"
    );
}

#[test]
fn a_refused_token_request_is_token_refused_with_the_servers_text() {
    let (addr, server) = one_request(
        "401 Unauthorized",
        r#"{"details":"incorrect username or password"}"#,
    );
    let refused = ask_token(&addr, None).unwrap_err();
    let request = server.join().unwrap();
    assert!(!request.contains("authorization:"), "{request}");
    match refused {
        RegistryError::TokenRefused {
            registry, message, ..
        } => {
            assert_eq!(registry, "reg.example");
            assert_eq!(message, "unauthorized: incorrect username or password");
        }
        other => panic!("{other}"),
    }
}

#[test]
fn a_throttled_token_server_is_retried_as_it_asks_and_named() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (addr, server) = one_request_with("429 Too Many Requests", "Retry-After: 2\r\n", "");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let challenge = super::token::Challenge {
        realm: format!("http://{addr}/token"),
        service: None,
    };
    let fetched = runtime.block_on(super::token::fetch(
        &reqwest::Client::new(),
        "reg.example",
        &challenge,
        &["repository:a/b:pull".to_string()],
        None,
    ));
    server.join().unwrap();
    match fetched {
        Err(Failure::Status {
            registry,
            status,
            retry_after,
            ..
        }) => {
            assert_eq!(registry, addr);
            assert_eq!(status.as_u16(), 429);
            assert_eq!(retry_after, Some(Duration::from_secs(2)));
        }
        other => panic!("a 429 from the token server is not retried: {other:?}"),
    }
}

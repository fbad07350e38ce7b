//! How img reaches and authenticates to registries beyond plain HTTP and htpasswd: HTTPS with a
//! CA trusted through the system store (`SSL_CERT_FILE`), the bearer-token flow, and
//! credentials from Docker credential helpers (`credsStore`, `credHelpers`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tests::registry::{
    TOKEN_REFUSAL, TOKEN_SERVICE, TestCa, TestRegistry, TokenAuthProxy, TokenRequest,
};

use crate::Rig;
use crate::registry::{fresh_state, img_in, inspect, ok, printed_digest, text};

/// The name tools/setup maps to 127.0.0.1 in /etc/hosts. img speaks plain HTTP to localhost and
/// 127.0.0.0/8 whatever the flags, so HTTPS needs a name that is not loopback by its spelling.
const TLS_HOST: &str = "img-registry.test";

fn can_run() -> bool {
    crate::registry::can_run() && tests::can_run(false, &["openssl"])
}

/// Whether /etc/hosts has tools/setup's line for `TLS_HOST`; with CI=true it must.
fn tls_host_resolves() -> bool {
    let hosts = fs::read_to_string("/etc/hosts").unwrap_or_default();
    let present = hosts.lines().any(|l| {
        let mut fields = l.split('#').next().unwrap_or("").split_whitespace();
        fields.next() == Some("127.0.0.1") && fields.any(|name| name == TLS_HOST)
    });
    if !present {
        let why = format!("/etc/hosts has no `127.0.0.1 {TLS_HOST}` line (run tools/setup)");
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI must run this test: {why}");
        }
        eprintln!("skipping: {why}");
    }
    present
}

#[test]
fn https_registry_works_with_its_ca_in_ssl_cert_file_and_an_unknown_ca_is_named() {
    if !can_run() || !tls_host_resolves() {
        return;
    }
    let ca = TestCa::create(&[TLS_HOST, "127.0.0.1"]).unwrap();
    let registry = TestRegistry::start_tls(&ca).unwrap();
    let host = format!("{TLS_HOST}:{}", registry.port());
    let rig = Rig::create();
    let local = inspect(&rig.state, "busybox");
    let target = format!("{host}/tls/busybox:1");
    // SSL_CERT_FILE replaces the system store (rustls-native-certs reads it instead); an empty
    // SSL_CERT_DIR adds nothing, so only the test CA is trusted.
    let trusted = [
        ("SSL_CERT_FILE", ca.ca.as_path()),
        ("SSL_CERT_DIR", Path::new("")),
    ];

    let pushed = ok(
        img_in(&rig.state, &trusted, None, &["push", "busybox", &target]),
        "img push over HTTPS",
    );
    assert_eq!(printed_digest(&pushed), local["Digest"].as_str().unwrap());
    let state = fresh_state();
    let pulled = ok(
        img_in(state.path(), &trusted, None, &["pull", &target]),
        "img pull over HTTPS",
    );
    assert_eq!(printed_digest(&pulled), local["Digest"].as_str().unwrap());

    // The registry really spoke TLS: the same name over plain HTTP fails.
    let plain = img_in(
        fresh_state().path(),
        &trusted,
        None,
        &["pull", "--insecure-registry", &host, &target],
    );
    assert!(!plain.status.success(), "{}", text(&plain));

    // A CA that did not sign the registry's certificate: one clear error, no retries.
    let stranger = TestCa::create(&[TLS_HOST]).unwrap();
    let untrusted = [
        ("SSL_CERT_FILE", stranger.ca.as_path()),
        ("SSL_CERT_DIR", Path::new("")),
    ];
    let out = img_in(fresh_state().path(), &untrusted, None, &["pull", &target]);
    assert!(!out.status.success());
    let said = text(&out);
    assert!(
        said.contains(&format!(
            "TLS with {host} failed: invalid peer certificate: UnknownIssuer"
        )),
        "{said}"
    );
    assert!(said.contains("SSL_CERT_FILE"), "{said}");
    assert!(!said.contains("gave up after"), "{said}");
    assert!(!said.contains("panicked"), "{said}");
    let out = img_in(&rig.state, &untrusted, None, &["push", "busybox", &target]);
    assert!(
        text(&out).contains(&format!("TLS with {host} failed")),
        "{}",
        text(&out)
    );
}

#[test]
fn bearer_token_registry_login_push_and_pull_with_the_right_scopes() {
    if !can_run() {
        return;
    }
    let registry = TestRegistry::start().unwrap();
    let proxy = TokenAuthProxy::start(registry.host(), "bob", "t0ken-pass").unwrap();
    let host = proxy.host();
    let rig = Rig::create();
    let local = inspect(&rig.state, "busybox");
    let docker = fresh_state();
    let env = [("DOCKER_CONFIG", docker.path())];
    let target = format!("{host}/tok/busybox:1");

    let anonymous = img_in(&rig.state, &env, None, &["push", "busybox", &target]);
    assert!(!anonymous.status.success());
    assert!(
        text(&anonymous).contains(&format!("img login {host}")),
        "{}",
        text(&anonymous)
    );

    let wrong = img_in(
        &rig.state,
        &env,
        Some("nope\n"),
        &["login", "-u", "bob", "--password-stdin", host],
    );
    assert!(!wrong.status.success());
    assert!(
        text(&wrong).contains(&format!("{host} refused the credentials")),
        "{}",
        text(&wrong)
    );
    assert!(!docker.path().join("config.json").exists());
    let asked = proxy.token_requests();
    assert_eq!(
        asked.last(),
        Some(&TokenRequest {
            scopes: Vec::new(),
            service: Some(TOKEN_SERVICE.to_string()),
            account: Some("bob".to_string()),
            granted: false,
        }),
        "{asked:#?}"
    );

    let login = ok(
        img_in(
            &rig.state,
            &env,
            Some("t0ken-pass\n"),
            &["login", "-u", "bob", "--password-stdin", host],
        ),
        "img login",
    );
    assert!(login.contains("Login Succeeded"), "{login}");

    let pushed = ok(
        img_in(&rig.state, &env, None, &["push", "busybox", &target]),
        "img push with a token",
    );
    assert_eq!(printed_digest(&pushed), local["Digest"].as_str().unwrap());
    let push_scope = "repository:tok/busybox:pull,push".to_string();
    assert!(
        proxy
            .token_requests()
            .iter()
            .any(|r| r.granted && r.scopes == [push_scope.clone()]),
        "no token asked for {push_scope}: {:#?}",
        proxy.token_requests()
    );

    let state = fresh_state();
    let pulled = ok(
        img_in(state.path(), &env, None, &["pull", &target]),
        "img pull with a token",
    );
    assert_eq!(printed_digest(&pulled), local["Digest"].as_str().unwrap());
    let requests = proxy.token_requests();
    let pull_scope = "repository:tok/busybox:pull".to_string();
    let pull_token = requests
        .iter()
        .find(|r| r.granted && r.scopes == [pull_scope.clone()])
        .unwrap_or_else(|| panic!("no token asked for {pull_scope}: {requests:#?}"));
    assert_eq!(pull_token.service.as_deref(), Some(TOKEN_SERVICE));
    // Every request that reached the registry had a token; those refused were the challenges
    // before one was asked for.
    assert!(!proxy.refused().is_empty());

    // The stored password is the token request's: a wrong one is refused on pull too.
    fs::write(
        docker.path().join("config.json"),
        serde_json::json!({ "auths": { host: { "auth": "Ym9iOndyb25n" } } }).to_string(), // bob:wrong
    )
    .unwrap();
    let denied = img_in(fresh_state().path(), &env, None, &["pull", &target]);
    assert!(!denied.status.success());
    assert!(
        text(&denied).contains(&format!("{host} refused the credentials")),
        "{}",
        text(&denied)
    );
}

/// A directory for PATH holding `docker-credential-imgtest`, which answers `get` for a server
/// with the file of that name in `creds` (or docker-credential-helpers' "not found" error) and
/// logs the servers asked for, keeps what `store` is given in that file and removes it on
/// `erase` (logging `store SERVER` and `erase SERVER`), and `docker-credential-broken`, which
/// reads the request and fails.
struct Helpers {
    dir: tempfile::TempDir,
    creds: PathBuf,
    log: PathBuf,
    path: PathBuf,
}

impl Helpers {
    fn create() -> Helpers {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        // The test user's img runs the helpers and they write the log.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let creds = dir.path().join("creds");
        fs::create_dir(&creds).unwrap();
        let log = dir.path().join("log");
        fs::write(&log, "").unwrap();
        fs::set_permissions(&log, fs::Permissions::from_mode(0o666)).unwrap();
        let bin = dir.path().join("bin");
        fs::create_dir(&bin).unwrap();
        let script = |name: &str, body: String| {
            let path = bin.join(name);
            fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        };
        script(
            "docker-credential-imgtest",
            format!(
                "if [ \"$1\" = store ]; then\n\
                   request=$(cat)\n\
                   server=$(printf '%s' \"$request\" | sed 's/.*\"ServerURL\": *\"\\([^\"]*\\)\".*/\\1/')\n\
                   echo \"store $server\" >> {log}\n\
                   printf '%s' \"$request\" > \"{creds}/$server\"\n\
                   exit 0\n\
                 fi\n\
                 if [ \"$1\" = erase ]; then\n\
                   read -r server\n\
                   echo \"erase $server\" >> {log}\n\
                   [ -f \"{creds}/$server\" ] || \
                   {{ echo 'credentials not found in native keychain'; exit 1; }}\n\
                   rm -f \"{creds}/$server\"\n\
                   exit 0\n\
                 fi\n\
                 [ \"$1\" = get ] || {{ echo \"unsupported action $1\" >&2; exit 1; }}\n\
                 read -r server\n\
                 echo \"$server\" >> {log}\n\
                 [ -f \"{creds}/$server\" ] || \
                 {{ echo 'credentials not found in native keychain'; exit 1; }}\n\
                 cat \"{creds}/$server\"\n",
                log = log.display(),
                creds = creds.display()
            ),
        );
        script(
            "docker-credential-broken",
            "read -r server\necho 'the keychain is locked' >&2\nexit 1\n".to_string(),
        );
        let path = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        )))
        .unwrap()
        .into();
        Helpers {
            dir,
            creds,
            log,
            path,
        }
    }

    fn store(&self, server: &str, user: &str, secret: &str) {
        let answer = serde_json::json!({ "ServerURL": server, "Username": user, "Secret": secret });
        fs::write(self.creds.join(server), answer.to_string()).unwrap();
    }

    fn asked(&self) -> Vec<String> {
        fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

#[test]
fn credentials_come_from_creds_store_and_cred_helpers() {
    if !can_run() {
        return;
    }
    let registry = TestRegistry::start_with_auth("carol", "h3lper").unwrap();
    let host = registry.host();
    let rig = Rig::create();
    let local = inspect(&rig.state, "busybox");
    let helpers = Helpers::create();
    let docker = fresh_state();
    let config = docker.path().join("config.json");
    let set_config = |json: Value| fs::write(&config, json.to_string()).unwrap();
    let env = [
        ("DOCKER_CONFIG", docker.path()),
        ("PATH", helpers.path.as_path()),
    ];
    let target = format!("{host}/helped/busybox:1");
    helpers.store(host, "carol", "h3lper");

    set_config(serde_json::json!({ "credsStore": "imgtest" }));
    let pushed = ok(
        img_in(&rig.state, &env, None, &["push", "busybox", &target]),
        "img push with credsStore",
    );
    assert_eq!(printed_digest(&pushed), local["Digest"].as_str().unwrap());
    assert!(
        helpers.asked().iter().all(|s| s == host),
        "{:?}",
        helpers.asked()
    );
    assert!(!helpers.asked().is_empty());
    ok(
        img_in(fresh_state().path(), &env, None, &["pull", &target]),
        "img pull with credsStore",
    );

    // credHelpers wins over credsStore for its registry.
    set_config(serde_json::json!({
        "credsStore": "broken",
        "credHelpers": { host: "imgtest" },
    }));
    let pulled = ok(
        img_in(fresh_state().path(), &env, None, &["pull", &target]),
        "img pull with credHelpers",
    );
    assert_eq!(printed_digest(&pulled), local["Digest"].as_str().unwrap());

    // A helper that fails is named, with what it said.
    set_config(serde_json::json!({ "credHelpers": { host: "broken" } }));
    let out = img_in(fresh_state().path(), &env, None, &["pull", &target]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains(&format!(
            "credentials for {host}: `docker-credential-broken get` failed: the keychain is locked"
        )),
        "{}",
        text(&out)
    );

    // A helper that is not installed.
    set_config(serde_json::json!({ "credsStore": "absent" }));
    let out = img_in(fresh_state().path(), &env, None, &["pull", &target]);
    assert!(
        text(&out).contains(
            "could not run `docker-credential-absent get`: docker-credential-absent is not on PATH"
        ),
        "{}",
        text(&out)
    );

    // A helper with nothing for the registry means no credentials, as in Docker: the registry
    // refuses the anonymous pull and the error says how to log in.
    fs::remove_file(helpers.creds.join(host)).unwrap();
    set_config(serde_json::json!({ "credsStore": "imgtest" }));
    let out = img_in(fresh_state().path(), &env, None, &["pull", &target]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains(&format!("img login {host}")),
        "{}",
        text(&out)
    );
    drop(helpers.dir);
}

/// `img login` stores what it verified with the credential helper the config names, as
/// `docker login` does (not in `auths`), pulls then read it back, and `img logout` erases it.
#[test]
fn login_and_logout_go_through_the_credential_helper() {
    if !can_run() {
        return;
    }
    let registry = TestRegistry::start_with_auth("dave", "st0re").unwrap();
    let host = registry.host();
    let rig = Rig::create();
    let helpers = Helpers::create();
    let docker = fresh_state();
    let config = docker.path().join("config.json");
    fs::write(
        &config,
        serde_json::json!({ "credsStore": "imgtest" }).to_string(),
    )
    .unwrap();
    let env = [
        ("DOCKER_CONFIG", docker.path()),
        ("PATH", helpers.path.as_path()),
    ];
    let target = format!("{host}/stored/busybox:1");

    let login = img_in(
        &rig.state,
        &env,
        Some("st0re\n"),
        &["login", "-u", "dave", "--password-stdin", host],
    );
    assert!(
        text(&login).contains("Credentials stored in docker-credential-imgtest"),
        "{}",
        text(&login)
    );
    assert!(
        helpers.asked().contains(&format!("store {host}")),
        "{:?}",
        helpers.asked()
    );
    let saved: Value =
        serde_json::from_str(&fs::read_to_string(helpers.creds.join(host)).unwrap()).unwrap();
    assert_eq!(
        (saved["Username"].as_str(), saved["Secret"].as_str()),
        (Some("dave"), Some("st0re"))
    );
    let written: Value = serde_json::from_str(&fs::read_to_string(&config).unwrap()).unwrap();
    assert!(written.get("auths").is_none(), "{written}");

    ok(
        img_in(&rig.state, &env, None, &["push", "busybox", &target]),
        "img push with stored credentials",
    );
    ok(
        img_in(fresh_state().path(), &env, None, &["pull", &target]),
        "img pull with stored credentials",
    );

    let logout = ok(
        img_in(&rig.state, &env, None, &["logout", host]),
        "img logout",
    );
    assert!(
        logout.contains(&format!("Removed login credentials for {host}")),
        "{logout}"
    );
    assert!(
        helpers.asked().contains(&format!("erase {host}")),
        "{:?}",
        helpers.asked()
    );
    assert!(!helpers.creds.join(host).exists());
    // Nothing left to erase: not an error, as in Docker.
    let again = ok(
        img_in(&rig.state, &env, None, &["logout", host]),
        "img logout again",
    );
    assert!(
        again.contains(&format!("Not logged in to {host}")),
        "{again}"
    );
    let out = img_in(fresh_state().path(), &env, None, &["pull", &target]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains(&format!("img login {host}")),
        "{}",
        text(&out)
    );
    drop(helpers.dir);
}

/// `auths` for `host` in a Docker config: `user:password` in base64, as `docker login` writes.
fn basic_auth_config(host: &str, user: &str, password: &str) -> String {
    let token = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{user}:{password}"),
    );
    serde_json::json!({ "auths": { host: { "auth": token } } }).to_string()
}

/// Docker asks the token server for pull on the source repository besides pull,push on the
/// target before it mounts; a token for the target alone gets a plain upload from a token
/// registry, and the blob would be uploaded again.
#[test]
fn a_push_to_a_second_repository_of_a_token_registry_mounts_its_blobs() {
    if !can_run() {
        return;
    }
    let registry = TestRegistry::start().unwrap();
    let proxy = TokenAuthProxy::start(registry.host(), "erin", "m0unt").unwrap();
    let host = proxy.host();
    let rig = Rig::create();
    let local = inspect(&rig.state, "busybox");
    let docker = fresh_state();
    fs::write(
        docker.path().join("config.json"),
        basic_auth_config(host, "erin", "m0unt"),
    )
    .unwrap();
    let env = [("DOCKER_CONFIG", docker.path())];

    ok(
        img_in(
            &rig.state,
            &env,
            None,
            &["push", "busybox", &format!("{host}/first/busybox:1")],
        ),
        "img push to the first repository",
    );
    let pushed = ok(
        img_in(
            &rig.state,
            &env,
            None,
            &["push", "busybox", &format!("{host}/second/busybox:1")],
        ),
        "img push to the second repository",
    );
    assert_eq!(printed_digest(&pushed), local["Digest"].as_str().unwrap());
    assert!(
        pushed.contains(&format!("mounted from {host}/first/busybox")),
        "{pushed}"
    );
    assert!(!pushed.contains(": pushed"), "{pushed}");

    let both = vec![
        "repository:second/busybox:pull,push".to_string(),
        "repository:first/busybox:pull".to_string(),
    ];
    let asked = proxy.token_requests();
    assert!(
        asked.iter().any(|r| r.granted && r.scopes == both),
        "no token asked for {both:?}: {asked:#?}"
    );
    let manifest = &local["Manifest"];
    let mut blobs: Vec<&str> = std::iter::once(&manifest["config"])
        .chain(manifest["layers"].as_array().unwrap())
        .map(|d| d["digest"].as_str().unwrap())
        .collect();
    blobs.sort();
    let mounts = proxy.mounts();
    let mut mounted: Vec<&str> = mounts
        .iter()
        .filter(|m| m.mounted)
        .map(|m| m.digest.as_str())
        .collect();
    mounted.sort();
    assert_eq!(mounted, blobs, "{mounts:#?}");
    for m in mounts.iter().filter(|m| m.mounted) {
        assert_eq!(
            (m.target.as_str(), m.from.as_str()),
            ("second/busybox", "first/busybox")
        );
        assert_eq!(m.scopes, both, "{m:?}");
    }
    // No blob bytes went to the second repository: its uploads were never written to.
    let writes: Vec<String> = proxy
        .forwarded()
        .into_iter()
        .filter(|r| {
            (r.starts_with("PUT ") || r.starts_with("PATCH "))
                && r.contains("/v2/second/busybox/blobs/")
        })
        .collect();
    assert_eq!(writes, Vec::<String>::new());
    ok(
        img_in(
            fresh_state().path(),
            &env,
            None,
            &["pull", &format!("{host}/second/busybox:1")],
        ),
        "img pull of the mounted image",
    );
}

/// Docker prints the token server's answer to wrong credentials (`unauthorized: incorrect
/// username or password`); oci-client drops it, so img asks the token server once more.
#[test]
fn wrong_credentials_on_a_token_registry_show_the_token_servers_message() {
    if !can_run() {
        return;
    }
    let registry = TestRegistry::start().unwrap();
    let proxy = TokenAuthProxy::start(registry.host(), "frank", "r1ght").unwrap();
    let host = proxy.host();
    let rig = Rig::create();
    let docker = fresh_state();
    let env = [("DOCKER_CONFIG", docker.path())];
    let refusal = format!("unauthorized: {TOKEN_REFUSAL}");

    let login = img_in(
        &rig.state,
        &env,
        Some("wr0ng\n"),
        &["login", "-u", "frank", "--password-stdin", host],
    );
    assert!(!login.status.success());
    let said = text(&login);
    assert!(
        said.contains(&format!("{host} refused the credentials")),
        "{said}"
    );
    assert!(said.contains(&refusal), "{said}");

    fs::write(
        docker.path().join("config.json"),
        basic_auth_config(host, "frank", "wr0ng"),
    )
    .unwrap();
    let target = format!("{host}/denied/busybox:1");
    for (what, args) in [
        ("push", vec!["push", "busybox", target.as_str()]),
        ("pull", vec!["pull", target.as_str()]),
    ] {
        let out = img_in(&rig.state, &env, None, &args);
        assert!(!out.status.success(), "{what}");
        let said = text(&out);
        assert!(said.contains(&refusal), "{what}: {said}");
        assert!(
            said.contains(&format!("img login {host}")),
            "{what}: {said}"
        );
        assert!(!said.contains("gave up after"), "{what}: {said}");
    }
}

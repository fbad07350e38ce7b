//! Tests of `Reference`: Docker's reference grammar, normalisation and familiar forms.

use super::*;

#[track_caller]
fn check(input: &str, normalized: &str, familiar: &str) {
    let r = Reference::parse(input).unwrap();
    assert_eq!(r.to_string(), normalized, "normalized form of {input}");
    assert_eq!(r.familiar(), familiar, "familiar form of {input}");
    assert_eq!(
        Reference::parse(normalized).unwrap(),
        r,
        "{normalized} parses back"
    );
}

#[test]
fn short_names_normalize_like_docker_and_print_familiar() {
    let hex = "a".repeat(64);
    check(
        "busybox",
        "docker.io/library/busybox:latest",
        "busybox:latest",
    );
    check(
        "busybox:1.36",
        "docker.io/library/busybox:1.36",
        "busybox:1.36",
    );
    check("user/app", "docker.io/user/app:latest", "user/app:latest");
    check(
        "index.docker.io/library/alpine",
        "docker.io/library/alpine:latest",
        "alpine:latest",
    );
    check(
        "docker.io/library/a/b:t",
        "docker.io/library/a/b:t",
        "library/a/b:t",
    );
    check(
        "localhost:5000/a/b:t",
        "localhost:5000/a/b:t",
        "localhost:5000/a/b:t",
    );
    check("localhost/x", "localhost/x:latest", "localhost/x:latest");
    check(
        &format!("x@sha256:{hex}"),
        &format!("docker.io/library/x@sha256:{hex}"),
        &format!("x@sha256:{hex}"),
    );
    let r = Reference::parse(&format!("x@sha256:{hex}")).unwrap();
    assert_eq!(r.tag(), None);
    assert_eq!(r.digest(), Some(digest(&format!("sha256:{hex}"))));
}

#[test]
fn invalid_references_are_refused_with_the_input_named() {
    let long = format!("{}/x", "a".repeat(255));
    let sha = format!("x@sha256:{}", "a".repeat(64));
    let cases = [
        ("", "at least one component"),
        ("Busybox", "must be lowercase"),
        ("Host/Busybox", "must be lowercase"),
        ("a//b", "invalid reference format"),
        ("a/", "invalid reference format"),
        ("a_/b", "invalid reference format"),
        ("a...b", "invalid reference format"),
        ("a___b", "invalid reference format"),
        ("x@sha256:abc", "digest length"),
        (
            "x@md5:0123456789abcdef0123456789abcdef",
            "unsupported digest",
        ),
        ("x@sha256", "digest format"),
        (&sha.replace('a', "g"), "digest format"),
        (":tag", "invalid reference format"),
        ("x:", "invalid tag format"),
        ("x:-t", "invalid tag format"),
        ("x:t\u{e9}", "invalid tag format"),
        (&format!("x:{}", "t".repeat(129)), "invalid tag format"),
        ("-host.io/x", "invalid registry host"),
        ("host.io:/x", "invalid registry host"),
        ("host.io:50a/x", "invalid registry host"),
        (&long, "more than 255"),
    ];
    for (bad, why) in cases {
        let err = Reference::parse(bad).unwrap_err().to_string();
        assert!(err.contains(&format!("{bad:?}")), "{err}");
        assert!(err.contains(why), "{bad}: {err}");
    }
}

#[test]
fn the_grammar_accepts_what_docker_accepts() {
    let hex = "0".repeat(64);
    check(
        "a__b/c-----d/e.f_g",
        "docker.io/a__b/c-----d/e.f_g:latest",
        "a__b/c-----d/e.f_g:latest",
    );
    check(
        "test.com:5000",
        "docker.io/library/test.com:5000",
        "test.com:5000",
    );
    check(
        "Reg.IO:443/x/y:T_1.b-2",
        "Reg.IO:443/x/y:T_1.b-2",
        "Reg.IO:443/x/y:T_1.b-2",
    );
    check("MyHost/x", "MyHost/x:latest", "MyHost/x:latest");
    check(
        "my_user/x",
        "docker.io/my_user/x:latest",
        "my_user/x:latest",
    );
    check(
        &format!("localhost:5000/x:t@sha256:{hex}"),
        &format!("localhost:5000/x:t@sha256:{hex}"),
        &format!("localhost:5000/x:t@sha256:{hex}"),
    );
    let sha512 = format!("x@sha512:{}", "F".repeat(128));
    assert!(Reference::parse(&sha512).is_ok());
    let tag = format!("x:{}", "t".repeat(128));
    assert!(Reference::parse(&tag).is_ok());
}

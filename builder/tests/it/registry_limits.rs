//! Registries that throttle and registries that lie, through `FaultProxy` in front of a
//! loopback docker-registry: 429 and 503 answers retried as `Retry-After` asks, within a bound
//! that the error names; manifests that read two ways (CVE-2021-41190) or are too large, and
//! configs too large to read, refused.

use serde_json::{Value, json};
use tests::registry::{Fault, FaultProxy, Rule, TestRegistry};

use crate::Rig;
use crate::registry::{can_run, fresh_state, img_in, inspect, ok, printed_digest, text};

/// A throttling answer: `status` with `Retry-After: seconds`.
fn throttle(status: u16, seconds: u32) -> Fault {
    Fault::Answer {
        status,
        headers: vec![("Retry-After", seconds.to_string())],
        body: Vec::new(),
    }
}

/// The reason phrase img prints for `status`.
fn reason(status: u16) -> &'static str {
    match status {
        429 => "429 Too Many Requests",
        503 => "503 Service Unavailable",
        _ => unreachable!("only 429 and 503 are tested"),
    }
}

/// A registry holding busybox as `test/busybox:1`, and a rig whose store has it.
fn registry_with_busybox() -> (TestRegistry, Rig) {
    let registry = TestRegistry::start().unwrap();
    let rig = Rig::create();
    rig.img_ok(&[
        "push",
        "busybox",
        &format!("{}/test/busybox:1", registry.host()),
    ]);
    (registry, rig)
}

/// Pull and push each meet `status` twice on their first requests and get through, waiting
/// as `Retry-After` asks and saying so, one line a retry.
fn two_throttled_answers_are_waited_out(status: u16) {
    if !can_run() {
        return;
    }
    let (registry, rig) = registry_with_busybox();
    let local = inspect(&rig.state, "busybox");
    let proxy = FaultProxy::start(
        registry.host(),
        vec![Rule {
            method: "GET",
            path_contains: "/manifests/".into(),
            fault: throttle(status, 1),
            times: 2,
        }],
    )
    .unwrap();
    let other = fresh_state();
    let through = format!("{}/test/busybox:1", proxy.host());
    let pulled = ok(
        img_in(other.path(), &[], None, &["pull", &through]),
        "img pull",
    );
    assert_eq!(printed_digest(&pulled), local["Digest"].as_str().unwrap());
    for attempt in [2, 3] {
        let line = format!(
            "registry {} answered {}; retrying in 1s (attempt {attempt} of 5)",
            proxy.host(),
            reason(status)
        );
        assert!(pulled.contains(&line), "no {line:?} in:\n{pulled}");
    }

    proxy.set_rules(vec![
        Rule {
            method: "HEAD",
            path_contains: "/blobs/".into(),
            fault: throttle(status, 1),
            times: 2,
        },
        Rule {
            method: "PUT",
            path_contains: "/manifests/".into(),
            fault: throttle(status, 1),
            times: 2,
        },
    ]);
    let copy = format!("{}/copy/busybox:1", proxy.host());
    let pushed = ok(
        img_in(&rig.state, &[], None, &["push", "busybox", &copy]),
        "img push",
    );
    assert_eq!(printed_digest(&pushed), local["Digest"].as_str().unwrap());
    let retries = pushed
        .lines()
        .filter(|l| l.contains(&format!("answered {}; retrying in 1s", reason(status))))
        .count();
    assert_eq!(retries, 4, "{pushed}");
}

/// A registry that never stops answering `status` gets five requests, and the error names
/// the status and the attempts.
fn endless_throttling_gives_up_after_the_bound(status: u16) {
    if !can_run() {
        return;
    }
    let (registry, _rig) = registry_with_busybox();
    let proxy = FaultProxy::start(
        registry.host(),
        vec![Rule {
            method: "GET",
            path_contains: "/manifests/".into(),
            fault: throttle(status, 0),
            times: 1000,
        }],
    )
    .unwrap();
    let other = fresh_state();
    let through = format!("{}/test/busybox:1", proxy.host());
    let out = img_in(other.path(), &[], None, &["pull", &through]);
    let output = text(&out);
    assert!(!out.status.success(), "{output}");
    let expected = format!(
        "gave up after 5 attempts: registry {} answered {}",
        proxy.host(),
        reason(status)
    );
    assert!(output.contains(&expected), "no {expected:?} in:\n{output}");
    let asked = proxy
        .seen()
        .iter()
        .filter(|s| s.method == "GET" && s.target.contains("/manifests/"))
        .count();
    assert_eq!(asked, 5);
}

#[test]
fn pull_and_push_wait_out_two_429s_as_retry_after_asks() {
    two_throttled_answers_are_waited_out(429);
}

#[test]
fn pull_and_push_wait_out_two_503s_as_retry_after_asks() {
    two_throttled_answers_are_waited_out(503);
}

#[test]
fn endless_429s_give_up_after_five_attempts_naming_the_status() {
    endless_throttling_gives_up_after_the_bound(429);
}

#[test]
fn endless_503s_give_up_after_five_attempts_naming_the_status() {
    endless_throttling_gives_up_after_the_bound(503);
}

/// Pulls `test/busybox:1` through a proxy that answers its manifest GET with `manifest`, and
/// returns the failed pull's output and the blob requests it made, after checking nothing was
/// stored.
fn pull_with_manifest(manifest: &Value) -> (String, Vec<String>) {
    let (registry, _rig) = registry_with_busybox();
    let proxy = FaultProxy::start(
        registry.host(),
        vec![Rule {
            method: "GET",
            path_contains: "/manifests/".into(),
            fault: Fault::Answer {
                status: 200,
                headers: vec![(
                    "Content-Type",
                    "application/vnd.oci.image.manifest.v1+json".to_string(),
                )],
                body: serde_json::to_vec(manifest).unwrap(),
            },
            times: 1000,
        }],
    )
    .unwrap();
    let other = fresh_state();
    let through = format!("{}/test/busybox:1", proxy.host());
    let out = img_in(other.path(), &[], None, &["pull", &through]);
    let output = text(&out);
    assert!(!out.status.success(), "{output}");
    let ls = ok(img_in(other.path(), &[], None, &["ls"]), "img ls");
    assert!(!ls.contains("busybox"), "{ls}");
    let blobs = proxy
        .seen()
        .into_iter()
        .filter(|s| s.target.contains("/blobs/"))
        .map(|s| s.target)
        .collect();
    (output, blobs)
}

/// busybox's manifest as the local store has it.
fn busybox_manifest() -> Value {
    let rig = Rig::create();
    inspect(&rig.state, "busybox")["Manifest"].clone()
}

#[test]
fn a_pull_refuses_a_manifest_with_both_manifests_and_layers() {
    if !can_run() {
        return;
    }
    let mut manifest = busybox_manifest();
    manifest["manifests"] = json!([]);
    let (output, _) = pull_with_manifest(&manifest);
    assert!(output.contains("CVE-2021-41190"), "{output}");
}

#[test]
fn a_pull_refuses_a_manifest_over_4_mib() {
    if !can_run() {
        return;
    }
    let mut manifest = busybox_manifest();
    manifest["annotations"] = json!({ "padding": "x".repeat(5 << 20) });
    let (output, _) = pull_with_manifest(&manifest);
    assert!(output.contains("over the 4 MiB limit"), "{output}");
}

#[test]
fn a_pull_refuses_a_config_over_4_mib_before_downloading_it() {
    if !can_run() {
        return;
    }
    let mut manifest = busybox_manifest();
    manifest["config"]["size"] = json!(5 << 20);
    let (output, blobs) = pull_with_manifest(&manifest);
    assert!(
        output.contains("its config is 5242880 bytes, over the 4 MiB limit"),
        "{output}"
    );
    assert_eq!(blobs, Vec::<String>::new());
}

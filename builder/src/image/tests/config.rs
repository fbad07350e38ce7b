//! Tests of `ImageConfig`: Docker's extra and unknown fields survive, key order, env, chain IDs.

use super::*;

#[test]
fn docker_extensions_and_unknown_fields_survive_a_round_trip() {
    let docker = r#"{"architecture":"amd64","os":"linux","created":"2024-01-01T00:00:00.123456789Z",
        "docker_version":"24.0.7","container_config":{"Hostname":"x"},
        "config":{"Hostname":"","Env":["PATH=/bin"],"Cmd":null,"Entrypoint":["/e"],
          "Healthcheck":{"Test":["CMD","true"],"Interval":1000000000,"Retries":3},
          "Shell":["/bin/bash","-c"],"OnBuild":["RUN x"],"ArgsEscaped":true,
          "ExposedPorts":{"80/tcp":{}},"Volumes":null,"Labels":{"b":"2","a":"1"},
          "StopSignal":"SIGQUIT"},
        "rootfs":{"type":"layers","diff_ids":[]},
        "history":[{"created_by":"CMD x","empty_layer":true}]}"#;
    let config: ImageConfig = serde_json::from_str(docker).unwrap();
    let c = &config.config;
    assert_eq!(
        c.shell.as_deref(),
        Some(&["/bin/bash".to_string(), "-c".to_string()][..])
    );
    assert_eq!(c.on_build, ["RUN x"]);
    assert!(c.args_escaped);
    let hc = c.healthcheck.as_ref().unwrap();
    assert_eq!((hc.interval, hc.retries), (1_000_000_000, 3));
    assert_eq!(c.cmd, None);
    assert!(config.history[0].empty_layer);

    let again: serde_json::Value = serde_json::from_slice(&config.to_json()).unwrap();
    let original: serde_json::Value = serde_json::from_str(docker).unwrap();
    for pointer in [
        "/config/Healthcheck",
        "/config/Shell",
        "/config/OnBuild",
        "/config/ArgsEscaped",
        "/config/Hostname",
        "/container_config",
        "/docker_version",
        "/created",
        "/config/Labels",
    ] {
        assert_eq!(
            again.pointer(pointer),
            original.pointer(pointer),
            "{pointer}"
        );
    }
}

#[test]
fn serializes_with_sorted_keys_and_docker_omissions() {
    let mut config = ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        ..ImageConfig::default()
    };
    config.config.labels.insert("z".into(), "1".into());
    config.config.labels.insert("a".into(), "2".into());
    config
        .config
        .exposed_ports
        .insert("80/tcp".into(), Empty {});
    config.set_env("PATH", "/bin");
    config.push_empty_layer(History {
        created_by: Some("LABEL".into()),
        ..History::default()
    });
    assert_eq!(
        String::from_utf8(config.to_json()).unwrap(),
        r#"{"architecture":"amd64","config":{"Env":["PATH=/bin"],"ExposedPorts":{"80/tcp":{}},"Labels":{"a":"2","z":"1"}},"history":[{"created_by":"LABEL","empty_layer":true}],"os":"linux","rootfs":{"diff_ids":[],"type":"layers"}}"#
    );
    // An empty container config is still written, as `{}`.
    let empty = ImageConfig::default().to_json();
    assert!(String::from_utf8(empty).unwrap().contains(r#""config":{}"#));
}

#[test]
fn set_env_replaces_a_variable_in_place() {
    let mut config = ImageConfig::default();
    config.set_env("A", "1");
    config.set_env("B", "2");
    config.set_env("A", "3=x");
    assert_eq!(config.config.env, ["A=3=x", "B=2"]);
    assert_eq!(config.env_var("A"), Some("3=x"));
    assert_eq!(config.env_var("C"), None);
}

#[test]
fn explicit_empty_entrypoint_differs_from_unset() {
    let mut config = ImageConfig::default();
    config.config.entrypoint = Some(vec![]);
    let json = String::from_utf8(config.to_json()).unwrap();
    assert!(json.contains(r#""Entrypoint":[]"#), "{json}");
}

#[test]
fn chain_id_follows_the_oci_definition() {
    let a = digest("sha256:ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb");
    let b = digest("sha256:3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d");
    assert_eq!(chain_id(&[]), None);
    assert_eq!(chain_id(std::slice::from_ref(&a)), Some(a.clone()));
    // printf 'sha256:ca97… sha256:3e23…' | sha256sum
    let ab = digest("sha256:51c0c8ace48498d6f5fee6b0592cc06f2da0f3cbe09c5a34a97dce85c3889676");
    assert_eq!(chain_ids(&[a.clone(), b]), [a, ab]);
}

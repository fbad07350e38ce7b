//! Unit tests of the layer limits' config and option parsing.

use super::*;

#[test]
fn sizes_read_bytes_and_binary_units() {
    assert_eq!(parse_size("0"), Ok(0));
    assert_eq!(parse_size("512"), Ok(512));
    assert_eq!(parse_size("2GiB"), Ok(2 << 30));
    assert_eq!(parse_size("500M"), Ok(500 << 20));
    assert_eq!(parse_size("1 tb"), Ok(1 << 40));
    assert!(parse_size("1.5G").unwrap_err().contains("1.5G"));
    assert!(parse_size("3 parsecs").is_err());
    assert!(
        parse_size("99999999999T")
            .unwrap_err()
            .contains("too large")
    );
}

#[test]
fn config_keys_override_defaults_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        LayerLimits::read_config(dir.path()).unwrap(),
        LayerLimits::default()
    );
    std::fs::write(
        dir.path().join(CONFIG_FILE),
        r#"{"max_layer_ratio": 7, "min_free_space": "2GiB"}"#,
    )
    .unwrap();
    let read = LayerLimits::read_config(dir.path()).unwrap();
    assert_eq!(
        read,
        LayerLimits {
            max_layer_ratio: 7,
            min_free_space: 2 << 30,
            ..LayerLimits::default()
        }
    );
    let args = LimitArgs {
        max_layer_ratio: Some(0),
        ..LimitArgs::default()
    };
    assert_eq!(args.over(read).max_layer_ratio, 0);
    assert_eq!(args.over(read).min_free_space, 2 << 30);
}

#[test]
fn config_with_an_unknown_key_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(CONFIG_FILE), r#"{"max_layer_ration": 7}"#).unwrap();
    let err = LayerLimits::read_config(dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("config.json"), "{err}");
    assert!(err.contains("max_layer_ration"), "{err}");
}

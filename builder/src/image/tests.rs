//! Tests of the image store, references, configs, the state lock and archives (with skopeo).

use std::io::{self, Read, Write};
use std::path::Path;
use std::process::Command;
use std::str::FromStr;
use std::sync::mpsc;
use std::time::Duration;

use flate2::write::GzEncoder;
use oci_spec::image::{Descriptor, Digest, ImageManifest, MediaType};
use tempfile::TempDir;

use super::*;

fn digest(s: &str) -> Digest {
    s.parse().unwrap()
}

fn state() -> (TempDir, ImageStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    (dir, store)
}

/// An uncompressed layer tar holding `files` (path, contents).
fn layer_tar(files: &[(&str, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, contents) in files {
        let mut header = tar::Header::new_ustar();
        header.set_size(contents.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        builder
            .append_data(&mut header, path, contents.as_bytes())
            .unwrap();
    }
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Stores an image with one gzip layer per entry of `layers` and tags it `name`.
fn make_image(store: &ImageStore, name: &str, layers: &[&[(&str, &str)]]) -> Descriptor {
    let mut config = ImageConfig::for_host();
    config.created = Some("2024-01-02T03:04:05Z".to_string());
    config.config.cmd = Some(vec!["/bin/sh".into(), "-c".into(), "echo hi".into()]);
    config.config.healthcheck = Some(HealthConfig {
        test: vec!["CMD-SHELL".into(), "true".into()],
        interval: 30_000_000_000,
        ..HealthConfig::default()
    });
    config.config.on_build = vec!["RUN echo child".into()];
    let mut descriptors = Vec::new();
    for files in layers {
        let tar = layer_tar(files);
        let blob = store.put_blob(&gzip(&tar)[..], None).unwrap();
        descriptors.push(blob.descriptor(MediaType::ImageLayerGzip));
        config.push_layer(
            sha256_digest(&tar),
            History {
                created_by: Some(format!("COPY {} /", files[0].0)),
                ..History::default()
            },
        );
    }
    config.push_empty_layer(History {
        created_by: Some("CMD [\"/bin/sh\"]".into()),
        ..History::default()
    });
    let manifest = store.put_image(&config, descriptors).unwrap();
    store
        .tag(&Reference::parse(name).unwrap(), &manifest)
        .unwrap();
    manifest
}

fn blob_names(store: &ImageStore) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(store.state_dir().join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

mod reference {
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
}

mod config {
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
}

mod store {
    use super::*;

    #[test]
    fn put_blob_names_content_by_its_digest() {
        let (_dir, store) = state();
        let blob = store.put_blob(&b"hello"[..], None).unwrap();
        assert_eq!(blob.digest, sha256_digest(b"hello"));
        assert_eq!(blob.size, 5);
        assert_eq!(store.read_blob(&blob.digest).unwrap(), b"hello");
        assert_eq!(blob_names(&store), [blob.digest.digest().to_string()]);
    }

    #[test]
    fn put_blob_refuses_content_that_does_not_match_the_expected_digest() {
        let (_dir, store) = state();
        let expected = sha256_digest(b"other");
        let err = store.put_blob(&b"hello"[..], Some(&expected)).unwrap_err();
        assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
        assert!(!store.has_blob(&expected).unwrap());
        assert!(
            blob_names(&store).is_empty(),
            "no temporary file left behind"
        );
    }

    #[test]
    fn put_blob_does_not_read_a_blob_it_already_has() {
        struct Fails;
        impl Read for Fails {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("read"))
            }
        }
        let (_dir, store) = state();
        let blob = store.put_blob(&b"hello"[..], None).unwrap();
        assert_eq!(store.put_blob(Fails, Some(&blob.digest)).unwrap(), blob);
    }

    #[test]
    fn only_sha256_digests_name_blobs() {
        let (_dir, store) = state();
        let sha512 = digest(&format!("sha512:{}", "a".repeat(128)));
        assert!(matches!(
            store.blob_path(&sha512),
            Err(StoreError::UnsupportedDigest(_))
        ));
    }

    #[test]
    fn a_killed_writer_leaves_only_a_temporary_file_that_prune_removes() {
        let (_dir, store) = state();
        let mut writer = store.blob_writer().unwrap();
        writer.write_all(b"half a layer").unwrap();
        writer.flush().unwrap();
        // A killed process runs no destructor.
        std::mem::forget(writer);
        let garbage = store.reclaimable(&[]).unwrap();
        assert!(garbage.blobs.is_empty());
        assert_eq!(garbage.temp_files.len(), 1);
        assert_eq!(garbage.bytes, 12);
        assert!(!store.has_blob(&sha256_digest(b"half a layer")).unwrap());
        store.prune(&[]).unwrap();
        assert!(blob_names(&store).is_empty());
    }

    #[test]
    fn tagged_images_resolve_by_name_digest_and_id_prefix() {
        let (dir, store) = state();
        let manifest = make_image(&store, "busybox", &[&[("a", "1")]]);
        let image = store.resolve("busybox").unwrap();
        assert_eq!(image.name.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(image.manifest_digest, *manifest.digest());
        assert_eq!(image.manifest.layers().len(), 1);
        assert_eq!(
            image.config.config.healthcheck.as_ref().unwrap().test,
            ["CMD-SHELL", "true"]
        );
        assert_eq!(image.created, image.updated);

        let id = image.id().digest().to_string();
        assert_eq!(
            store.resolve(&id[..12]).unwrap().manifest_digest,
            image.manifest_digest
        );
        assert_eq!(
            store.resolve(&format!("sha256:{}", &id[..6])).unwrap().id(),
            image.id()
        );
        let by_digest = store
            .resolve(&format!("busybox@{}", manifest.digest()))
            .unwrap();
        assert_eq!(by_digest.id(), image.id());
        assert!(matches!(
            store.resolve("alpine"),
            Err(StoreError::NotFound(_))
        ));

        // A second store on the same dir sees the same names (the index is on disk).
        let reopened = ImageStore::open(dir.path()).unwrap();
        let names: Vec<String> = reopened
            .list()
            .unwrap()
            .iter()
            .map(|i| i.name.familiar())
            .collect();
        assert_eq!(names, ["busybox:latest"]);
    }

    #[test]
    fn retagging_keeps_created_and_moves_updated() {
        let (_dir, store) = state();
        make_image(&store, "app", &[&[("a", "1")]]);
        let first = store.resolve("app").unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let second = make_image(&store, "app", &[&[("a", "2")]]);
        let image = store.resolve("app").unwrap();
        assert_eq!(image.manifest_digest, *second.digest());
        assert_eq!(image.created, first.created);
        assert!(image.updated > first.updated);
    }

    #[test]
    fn tag_refuses_an_image_with_a_missing_layer() {
        let (_dir, store) = state();
        let missing = Blob {
            digest: sha256_digest(b"not stored"),
            size: 10,
        };
        let manifest = store
            .put_image(
                &ImageConfig::for_host(),
                vec![missing.descriptor(MediaType::ImageLayerGzip)],
            )
            .unwrap();
        let err = store
            .tag(&Reference::parse("x").unwrap(), &manifest)
            .unwrap_err();
        assert!(
            matches!(err, StoreError::BlobNotFound(ref d) if *d == missing.digest),
            "{err}"
        );
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn tag_refuses_digest_references() {
        let (_dir, store) = state();
        let manifest = make_image(&store, "x", &[&[("a", "1")]]);
        let name = Reference::parse(&format!("y@{}", manifest.digest())).unwrap();
        assert!(matches!(
            store.tag(&name, &manifest),
            Err(StoreError::TagWithDigest(_))
        ));
    }

    /// An OCI index of `entries` (manifest, os/arch/variant), stored as a blob; its digest.
    fn put_index(store: &ImageStore, entries: &[(&Descriptor, &str)]) -> Digest {
        let manifests: Vec<serde_json::Value> = entries
            .iter()
            .map(|(d, platform)| {
                let parts: Vec<&str> = platform.split('/').collect();
                let mut p = serde_json::json!({ "os": parts[0], "architecture": parts[1] });
                if let Some(v) = parts.get(2) {
                    p["variant"] = (*v).into();
                }
                serde_json::json!({
                    "mediaType": d.media_type().to_string(),
                    "digest": d.digest().to_string(),
                    "size": d.size(),
                    "platform": p,
                })
            })
            .collect();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        store
            .put_blob(&serde_json::to_vec(&index).unwrap()[..], None)
            .unwrap()
            .digest
    }

    fn host() -> String {
        let (arch, os, _) = host_platform();
        format!("{os}/{arch}")
    }

    #[test]
    fn an_index_digest_resolves_to_its_stored_host_manifest() {
        let (_dir, store) = state();
        let other = make_image(&store, "other", &[&[("other", "1")]]);
        let ours = make_image(&store, "ours", &[&[("ours", "1")]]);
        // The host's entry is not the first: the platform decides, not the order.
        let index = put_index(&store, &[(&other, "linux/s390x"), (&ours, &host())]);
        let image = store.resolve(&format!("x/y@{index}")).unwrap();
        assert_eq!(image.manifest_digest, *ours.digest());
        assert_eq!(image.name.to_string(), format!("docker.io/x/y@{index}"));
    }

    #[test]
    fn an_index_digest_resolves_to_the_one_platform_stored() {
        let (_dir, store) = state();
        let arm = make_image(&store, "arm", &[&[("arm", "1")]]);
        // The host's manifest is named by the index but was never pulled.
        let absent = Descriptor::new(
            MediaType::ImageManifest,
            100,
            sha256_digest(b"never stored"),
        );
        let index = put_index(&store, &[(&absent, &host()), (&arm, "linux/s390x")]);
        let image = store.resolve(&format!("x/y@{index}")).unwrap();
        assert_eq!(image.manifest_digest, *arm.digest());
    }

    #[test]
    fn an_index_digest_without_a_stored_manifest_is_not_found() {
        let (_dir, store) = state();
        let absent = Descriptor::new(
            MediaType::ImageManifest,
            100,
            sha256_digest(b"never stored"),
        );
        let index = put_index(&store, &[(&absent, &host())]);
        let name = format!("x/y@{index}");
        match store.resolve(&name) {
            Err(StoreError::NotFound(n)) => assert_eq!(n, name),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn id_prefix_shared_by_two_images_is_ambiguous() {
        let (_dir, store) = state();
        make_image(&store, "a", &[&[("a", "1")]]);
        make_image(&store, "b", &[&[("b", "1")]]);
        assert!(matches!(
            store.resolve("sha256:"),
            Err(StoreError::Reference(_))
        ));
        // Every hex ID starts with one of 16 digits; try them all until two images share one.
        let ambiguous = (0..16)
            .map(|d| format!("{d:x}"))
            .filter(|p| {
                store
                    .list()
                    .unwrap()
                    .iter()
                    .filter(|i| i.id().digest().starts_with(p.as_str()))
                    .count()
                    == 2
            })
            .collect::<Vec<_>>();
        for prefix in ambiguous {
            assert!(matches!(
                store.resolve(&prefix),
                Err(StoreError::Ambiguous(_))
            ));
        }
    }

    #[test]
    fn prune_deletes_only_what_no_name_and_no_extra_root_reaches() {
        let (_dir, store) = state();
        make_image(&store, "keep", &[&[("shared", "s")], &[("k", "k")]]);
        let gone = make_image(&store, "gone", &[&[("shared", "s")], &[("g", "g")]]);
        let cache = store.put_blob(&b"cache layer"[..], None).unwrap();
        let stray = store.put_blob(&b"stray"[..], None).unwrap();
        let gone_manifest: ImageManifest = store.read_json(gone.digest()).unwrap();
        store.untag("gone").unwrap();

        let garbage = store
            .reclaimable(std::slice::from_ref(&cache.digest))
            .unwrap();
        let mut expected: Vec<Digest> = vec![
            gone.digest().clone(),
            gone_manifest.config().digest().clone(),
            gone_manifest.layers()[1].digest().clone(),
            stray.digest.clone(),
        ];
        expected.sort_by(|a, b| a.digest().cmp(b.digest()));
        let found: Vec<Digest> = garbage.blobs.iter().map(|b| b.digest.clone()).collect();
        assert_eq!(found, expected);
        assert_eq!(
            garbage.bytes,
            garbage.blobs.iter().map(|b| b.size).sum::<u64>()
        );
        let before = store.usage().unwrap();
        store.prune(std::slice::from_ref(&cache.digest)).unwrap();
        let after = store.usage().unwrap();
        assert_eq!(before.blobs - after.blobs, 4);
        assert_eq!(before.bytes - after.bytes, garbage.bytes);
        assert!(store.has_blob(&cache.digest).unwrap());
        assert!(store.resolve("keep").is_ok(), "the kept image is whole");
        assert!(
            store
                .reclaimable(std::slice::from_ref(&cache.digest))
                .unwrap()
                .blobs
                .is_empty()
        );
    }

    #[test]
    fn remove_deletes_the_images_own_blobs_and_keeps_shared_and_unrelated_ones() {
        let (_dir, store) = state();
        make_image(&store, "keep", &[&[("shared", "s")]]);
        let gone = make_image(&store, "gone", &[&[("shared", "s")], &[("g", "g")]]);
        let stray = store.put_blob(&b"stray"[..], None).unwrap();
        let removed = store.remove("gone", &[]).unwrap();
        assert_eq!(removed.blobs.len(), 3, "manifest, config, own layer");
        assert!(!store.has_blob(gone.digest()).unwrap());
        assert!(
            store.has_blob(&stray.digest).unwrap(),
            "prune's job, not remove's"
        );
        assert!(store.resolve("keep").is_ok());
        assert!(matches!(
            store.remove("gone", &[]),
            Err(StoreError::NotFound(_))
        ));
    }

    #[test]
    fn the_names_index_is_replaced_whole() {
        let (dir, store) = state();
        make_image(&store, "a", &[&[("a", "1")]]);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("images.json")).unwrap())
                .unwrap();
        assert!(
            index
                .pointer("/images/docker.io~1library~1a:latest/manifest/digest")
                .is_some()
        );
    }
}

mod lock {
    use super::*;

    #[test]
    fn a_held_lock_refuses_a_second_holder_and_names_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        let held = StateLock::acquire(dir.path(), false, |_| panic!("free lock")).unwrap();
        // A second open file description conflicts under flock(2) even in one process.
        let err = StateLock::acquire(dir.path(), false, |_| panic!("no wait")).unwrap_err();
        let LockError::Held(contention) = &err else {
            panic!("{err}")
        };
        assert_eq!(contention.pid, Some(std::process::id()));
        assert_eq!(
            err.to_string(),
            format!(
                "the lock on {} is held by pid {}",
                dir.path().display(),
                std::process::id()
            )
        );
        drop(held);
        StateLock::acquire(dir.path(), false, |_| panic!("released")).unwrap();
    }

    #[test]
    fn a_waiting_acquire_reports_once_and_gets_the_lock_when_released() {
        let dir = tempfile::tempdir().unwrap();
        let held = StateLock::acquire(dir.path(), true, |_| panic!("free lock")).unwrap();
        let (tx, rx) = mpsc::channel();
        let path = dir.path().to_path_buf();
        let waiter = std::thread::spawn(move || {
            let mut calls = 0;
            let lock = StateLock::acquire(&path, true, |c| {
                calls += 1;
                tx.send(c.waiting_message()).unwrap();
            })
            .unwrap();
            (calls, lock)
        });
        let message = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(
            message,
            format!(
                "waiting for the lock on {} held by pid {}",
                dir.path().display(),
                std::process::id()
            )
        );
        assert!(
            !waiter.is_finished(),
            "the waiter blocks while the lock is held"
        );
        drop(held);
        let (calls, lock) = waiter.join().unwrap();
        assert_eq!(calls, 1);
        let pid = std::fs::read_to_string(lock.path()).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
    }

    #[test]
    fn the_lock_is_released_when_its_holder_process_dies() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("lock");
        // flock(1) takes the lock and, without forking, becomes `sleep`, which holds it.
        let mut child = Command::new("flock")
            .arg("--no-fork")
            .arg(&lock)
            .args(["sleep", "30"])
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match StateLock::acquire(dir.path(), false, |_| {}) {
                Err(LockError::Held(_)) => break,
                Ok(l) => {
                    drop(l);
                    assert!(
                        std::time::Instant::now() < deadline,
                        "flock never took the lock"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("{e}"),
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        StateLock::acquire(dir.path(), false, |_| panic!("dead holder")).unwrap();
    }
}

mod archive {
    use super::*;

    fn skopeo(args: &[&str]) -> String {
        let out = Command::new("skopeo")
            .args(["--insecure-policy", "--tmpdir", "/var/tmp"])
            .args(args)
            .output()
            .expect("skopeo is installed (apt-get install -y skopeo)");
        assert!(
            out.status.success(),
            "skopeo {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn save_to(store: &ImageStore, names: &[&str], format: ArchiveFormat, path: &Path) {
        let file = std::fs::File::create(path).unwrap();
        save(store, names, format, io::BufWriter::new(file)).unwrap();
    }

    fn load_from(store: &ImageStore, path: &Path) -> Vec<Loaded> {
        load(store, std::fs::File::open(path).unwrap()).unwrap()
    }

    fn archive_members(path: &Path) -> Vec<String> {
        let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
        archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn docker_archive_round_trips_and_skopeo_reads_it() {
        let (dir, store) = state();
        make_image(&store, "busybox", &[&[("a", "1")], &[("b", "2")]]);
        make_image(&store, "localhost:5000/x/y:t", &[&[("a", "1")]]);
        let image = store.resolve("busybox").unwrap();
        let tar = dir.path().join("docker.tar");
        save_to(
            &store,
            &["busybox", "busybox:latest", "localhost:5000/x/y:t"],
            ArchiveFormat::Docker,
            &tar,
        );
        let members = archive_members(&tar);
        let diff = image.config.rootfs.diff_ids[0].digest().to_string();
        assert!(
            members.contains(&format!("{diff}/layer.tar")),
            "{members:?}"
        );
        assert_eq!(
            members.iter().filter(|m| m.starts_with(&diff)).count(),
            1,
            "shared layer once"
        );

        // skopeo reads it: the config is ours byte for byte (same image ID).
        // An archive of several images needs the image named (or `@index`) in skopeo's reference.
        let source = format!("docker-archive:{}:busybox:latest", tar.display());
        let config = skopeo(&["inspect", "--raw", "--config", &source]);
        assert_eq!(sha256_digest(config.as_bytes()), *image.id());
        let config: ImageConfig = serde_json::from_str(&config).unwrap();
        assert_eq!(config.config.on_build, ["RUN echo child"]);
        let oci = dir.path().join("oci");
        skopeo(&["copy", &source, &format!("oci:{}:copied", oci.display())]);

        let (_dir2, other) = state();
        let loaded = load_from(&other, &tar);
        let names: Vec<String> = loaded
            .iter()
            .map(|l| l.name.as_ref().unwrap().familiar())
            .collect();
        assert_eq!(
            names,
            ["busybox:latest", "busybox:latest", "localhost:5000/x/y:t"]
        );
        let again = other.resolve("busybox").unwrap();
        assert_eq!(again.id(), image.id());
        assert_eq!(again.config.rootfs.diff_ids, image.config.rootfs.diff_ids);
        // docker-archive layers are plain tars; they are stored as they came.
        assert_eq!(
            *again.manifest.layers()[0].media_type(),
            MediaType::ImageLayer
        );
        assert_eq!(
            *again.manifest.layers()[0].digest(),
            image.config.rootfs.diff_ids[0]
        );
    }

    #[test]
    fn oci_archive_round_trips_and_skopeo_reads_it() {
        let (dir, store) = state();
        let manifest = make_image(&store, "busybox:1", &[&[("a", "1")]]);
        let image = store.resolve("busybox:1").unwrap();
        let tar = dir.path().join("oci.tar");
        save_to(&store, &["busybox:1"], ArchiveFormat::Oci, &tar);
        let members = archive_members(&tar);
        assert!(members.contains(&"oci-layout".to_string()));
        assert!(members.contains(&format!("blobs/sha256/{}", manifest.digest().digest())));

        let raw = skopeo(&[
            "inspect",
            "--raw",
            &format!("oci-archive:{}:1", tar.display()),
        ]);
        assert_eq!(sha256_digest(raw.as_bytes()), *manifest.digest());
        let config = skopeo(&[
            "inspect",
            "--raw",
            "--config",
            &format!("oci-archive:{}:1", tar.display()),
        ]);
        assert_eq!(sha256_digest(config.as_bytes()), *image.id());

        let (_dir2, other) = state();
        let loaded = load_from(&other, &tar);
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].name.as_ref().unwrap().familiar(), "busybox:1");
        assert_eq!(loaded[0].manifest.digest(), manifest.digest());
        assert_eq!(
            other.resolve("busybox:1").unwrap().manifest_digest,
            *manifest.digest()
        );
    }

    #[test]
    fn archives_skopeo_writes_load() {
        let (dir, store) = state();
        make_image(&store, "app", &[&[("a", "1")], &[("b", "2")]]);
        let image = store.resolve("app").unwrap();
        let ours = dir.path().join("ours.tar");
        save_to(&store, &["app"], ArchiveFormat::Oci, &ours);

        let docker = dir.path().join("skopeo-docker.tar");
        skopeo(&[
            "copy",
            &format!("oci-archive:{}:latest", ours.display()),
            &format!("docker-archive:{}:foo/bar:1", docker.display()),
        ]);
        let oci = dir.path().join("skopeo-oci.tar");
        skopeo(&[
            "copy",
            &format!("oci-archive:{}:latest", ours.display()),
            &format!("oci-archive:{}:docker.io/library/baz:2", oci.display()),
        ]);
        let bare = dir.path().join("skopeo-bare.tar");
        skopeo(&[
            "copy",
            &format!("oci-archive:{}:latest", ours.display()),
            &format!("oci-archive:{}:v3", bare.display()),
        ]);

        let (_dir2, other) = state();
        let loaded = load_from(&other, &docker);
        assert_eq!(
            loaded[0].name.as_ref().unwrap().to_string(),
            "docker.io/foo/bar:1"
        );
        assert_eq!(loaded[0].id, *image.id());
        let loaded = load_from(&other, &oci);
        assert_eq!(loaded[0].name.as_ref().unwrap().familiar(), "baz:2");
        assert_eq!(loaded[0].manifest.digest(), &image.manifest_digest);
        // A bare tag names no repository: the image is stored, unnamed.
        let loaded = load_from(&other, &bare);
        assert_eq!(loaded[0].name, None);
        assert!(other.has_blob(loaded[0].manifest.digest()).unwrap());
        assert_eq!(
            other
                .resolve("foo/bar:1")
                .unwrap()
                .config
                .rootfs
                .diff_ids
                .len(),
            2
        );
    }

    /// Writes a docker-archive by hand: manifest.json, a config and one layer file.
    fn docker_archive(config: &ImageConfig, layer: &[u8]) -> Vec<u8> {
        let config_json = config.to_json();
        let manifest = r#"[{"Config":"c.json","RepoTags":["hand:made"],"Layers":["l/layer.tar"]}]"#;
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in [
            ("manifest.json", manifest.as_bytes()),
            ("c.json", &config_json[..]),
            ("l/layer.tar", layer),
        ] {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, path, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn docker_archive_layers_must_match_the_config_diff_ids() {
        let tar = layer_tar(&[("a", "1")]);
        let mut config = ImageConfig::for_host();
        config.push_layer(sha256_digest(b"something else"), History::default());
        let (_dir, store) = state();
        let err = load(&store, &docker_archive(&config, &tar)[..]).unwrap_err();
        assert!(matches!(err, ArchiveError::DiffIdMismatch(_)), "{err}");
        assert!(store.list().unwrap().is_empty());

        // A gzipped layer is checked after decompression, and stored as it came.
        let mut config = ImageConfig::for_host();
        config.push_layer(sha256_digest(&tar), History::default());
        let loaded = load(&store, &docker_archive(&config, &gzip(&tar))[..]).unwrap();
        let image = store.resolve("hand:made").unwrap();
        assert_eq!(loaded[0].id, *image.id());
        assert_eq!(
            *image.manifest.layers()[0].media_type(),
            MediaType::ImageLayerGzip
        );
    }

    #[test]
    fn oci_blobs_must_match_their_names() {
        let (dir, store) = state();
        make_image(&store, "app", &[&[("a", "1")]]);
        let path = dir.path().join("oci.tar");
        save_to(&store, &["app"], ArchiveFormat::Oci, &path);
        let image = store.resolve("app").unwrap();
        let layer = image.manifest.layers()[0].digest().digest().to_string();
        // Rewrite the archive with the layer's bytes changed.
        let mut out = tar::Builder::new(Vec::new());
        let mut archive = tar::Archive::new(std::fs::File::open(&path).unwrap());
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            if name.ends_with(&layer) {
                data = gzip(&layer_tar(&[("evil", "x")]));
            }
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            out.append_data(&mut h, &name, &data[..]).unwrap();
        }
        let (_dir2, other) = state();
        let err = load(&other, &out.into_inner().unwrap()[..]).unwrap_err();
        assert!(
            matches!(err, ArchiveError::Store(StoreError::DigestMismatch { .. })),
            "{err}"
        );
        assert!(other.list().unwrap().is_empty());
    }

    #[test]
    fn load_refuses_a_tar_that_is_no_image_archive() {
        let (_dir, store) = state();
        let err = load(&store, &layer_tar(&[("a", "1")])[..]).unwrap_err();
        assert!(matches!(err, ArchiveError::NotAnArchive), "{err}");
    }

    #[test]
    fn import_gzips_a_plain_rootfs_and_keeps_its_diff_id() {
        let (_dir, store) = state();
        let rootfs = layer_tar(&[("etc/hostname", "x"), ("bin/sh", "#!")]);
        let name = Reference::parse("imported:1").unwrap();
        let options = ImportOptions {
            config: ContainerConfig {
                cmd: Some(vec!["/bin/sh".into()]),
                ..ContainerConfig::default()
            },
            comment: Some("Imported from -".into()),
        };
        let loaded = import_rootfs(&store, &rootfs[..], &name, options).unwrap();
        let image = store.resolve("imported:1").unwrap();
        assert_eq!(loaded.id, *image.id());
        assert_eq!(image.config.rootfs.diff_ids, [sha256_digest(&rootfs)]);
        assert_eq!(
            image.config.config.cmd.as_deref(),
            Some(&["/bin/sh".to_string()][..])
        );
        assert_eq!(
            (image.config.architecture.clone(), image.config.os.clone()),
            {
                let (a, o, _) = host_platform();
                (a, o)
            }
        );
        assert_eq!(
            image.config.history[0].comment.as_deref(),
            Some("Imported from -")
        );
        assert!(image.config.created_at().is_some());
        let layer = &image.manifest.layers()[0];
        assert_eq!(*layer.media_type(), MediaType::ImageLayerGzip);
        let mut unpacked = Vec::new();
        flate2::read::GzDecoder::new(store.open_blob(layer.digest()).unwrap())
            .read_to_end(&mut unpacked)
            .unwrap();
        assert_eq!(unpacked, rootfs);
    }

    #[test]
    fn import_stores_a_gzip_rootfs_as_it_is() {
        let (_dir, store) = state();
        let rootfs = layer_tar(&[("a", "1")]);
        let gz = gzip(&rootfs);
        let name = Reference::parse("imported").unwrap();
        import_rootfs(&store, &gz[..], &name, ImportOptions::default()).unwrap();
        let image = store.resolve("imported").unwrap();
        assert_eq!(*image.manifest.layers()[0].digest(), sha256_digest(&gz));
        assert_eq!(image.config.rootfs.diff_ids, [sha256_digest(&rootfs)]);
    }

    #[test]
    fn import_refuses_what_is_not_a_tar() {
        let (_dir, store) = state();
        let name = Reference::parse("x").unwrap();
        let text = "not a tar ".repeat(100);
        for input in [text.as_bytes().to_vec(), gzip(text.as_bytes())] {
            let err =
                import_rootfs(&store, &input[..], &name, ImportOptions::default()).unwrap_err();
            assert!(matches!(err, ArchiveError::NotATar), "{err}");
        }
        assert!(store.list().unwrap().is_empty());
    }
}

#[test]
fn platforms_parse_and_print_as_docker_spells_them() {
    let p = Platform::from_str("linux/arm64/v8").unwrap();
    assert_eq!(p.variant.as_deref(), Some("v8"));
    assert_eq!(p.to_string(), "linux/arm64/v8");
    assert_eq!(
        Platform::from_str("linux/amd64").unwrap().to_string(),
        "linux/amd64"
    );
    for bad in ["linux", "linux/", "/amd64", "a/b/c/d", ""] {
        assert!(Platform::from_str(bad).is_err(), "{bad:?}");
    }
}

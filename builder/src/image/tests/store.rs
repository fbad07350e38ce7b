//! Tests of `ImageStore`: blobs by digest, tags, resolving images, removal and garbage collection.

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

/// A layer writer leaves the hashing to the layer's producer: it stores the bytes under the
/// digest it is given, the one the producer computed over the same bytes.
#[test]
fn a_layer_writer_stores_under_its_producers_digest() {
    let (_dir, store) = state();
    let layer = b"a layer's tar, hashed by the diff that wrote it";
    let digest = sha256_digest(layer);
    let mut writer = store.layer_writer().unwrap();
    writer.write_all(layer).unwrap();
    let blob = writer.commit(Some(&digest)).unwrap();
    assert_eq!(blob.digest, digest);
    assert_eq!(blob.size, layer.len() as u64);
    assert_eq!(store.read_blob(&digest).unwrap(), layer);
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
    assert_eq!(
        image.name.as_ref().unwrap().to_string(),
        "docker.io/library/busybox:latest"
    );
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
    // FROM takes an ID only when it is spelled out; a short hex word is a name.
    assert!(matches!(
        store.resolve_from(&id[..1]),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.resolve_from(&id[..12]),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.resolve_from(&format!("sha256:{}", &id[..11])),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        store
            .resolve_from(&format!("sha256:{}", &id[..12]))
            .unwrap()
            .id(),
        image.id()
    );
    assert_eq!(store.resolve_from(&id).unwrap().id(), image.id());
    assert_eq!(store.resolve_from("busybox").unwrap().id(), image.id());
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
        .map(|i| i.display_name())
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
    assert_eq!(
        image.name.as_ref().unwrap().to_string(),
        format!("docker.io/x/y@{index}")
    );
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
fn an_image_kept_without_a_name_lists_resolves_by_id_and_survives_prune_until_named_or_removed() {
    let (_dir, store) = state();
    let manifest = make_image(&store, "x", &[&[("a", "1")]]);
    let id = store.resolve("x").unwrap().id().digest().to_string();
    // A name already points at it: nothing to keep.
    store.keep_untagged(&manifest).unwrap();
    assert_eq!(store.list().unwrap().len(), 1);

    store.untag("x").unwrap();
    store.keep_untagged(&manifest).unwrap();
    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, None);
    assert_eq!(listed[0].display_name(), "<none>");
    assert_eq!(store.resolve(&id[..8]).unwrap().name, None);
    assert!(matches!(
        store.resolve_from(&id[..8]),
        Err(StoreError::NotFound(_))
    ));
    store.prune(&[]).unwrap();
    assert!(
        store.resolve(&id).is_ok(),
        "prune keeps an image without a name whole"
    );

    // A name takes it out of the images without one.
    store
        .tag(&Reference::parse("y:1").unwrap(), &manifest)
        .unwrap();
    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].display_name(), "y:1");

    store.untag("y:1").unwrap();
    store.keep_untagged(&manifest).unwrap();
    let not_its_id = if id.starts_with('0') { "1" } else { "0" };
    assert!(matches!(
        store.untag(not_its_id),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        store.untag(&format!("sha256:{}", &id[..12])).unwrap(),
        manifest
    );
    assert!(store.list().unwrap().is_empty());
    store.prune(&[]).unwrap();
    assert_eq!(
        store.usage().unwrap().blobs,
        0,
        "removed, its blobs are garbage"
    );
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
        serde_json::from_slice(&std::fs::read(dir.path().join("images.json")).unwrap()).unwrap();
    assert!(
        index
            .pointer("/images/docker.io~1library~1a:latest/manifest/digest")
            .is_some()
    );
}

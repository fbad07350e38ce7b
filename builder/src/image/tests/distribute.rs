//! `ImageStore::distribution`: uncompressed layers compressed once, the same bytes every time,
//! kept and collected with their tars.

use std::io::Read;

use super::*;

/// Stores an image whose layers are plain tars, as a build stores them, and tags it `name`.
fn built_image(store: &ImageStore, name: &str, layers: &[&[(&str, &str)]]) -> Image {
    let mut config = ImageConfig::for_host();
    config.created = Some("2024-01-02T03:04:05Z".to_string());
    let mut descriptors = Vec::new();
    for files in layers {
        let tar = layer_tar(files);
        let blob = store.put_blob(&tar[..], None).unwrap();
        assert_eq!(blob.digest, sha256_digest(&tar));
        descriptors.push(blob.descriptor(MediaType::ImageLayer));
        config.push_layer(blob.digest, History::default());
    }
    let manifest = store.put_image(&config, descriptors).unwrap();
    store
        .tag(&Reference::parse(name).unwrap(), &manifest)
        .unwrap();
    store.resolve(name).unwrap()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn uncompressed_layers_go_gzipped_and_the_same_at_every_call() {
    let (_dir, store) = state();
    let image = built_image(&store, "a:1", &[&[("a", "aaaa")], &[("b", "bb")]]);
    let first = store.distribution(&image).unwrap();
    assert_eq!(first.compressed, 2);
    assert_ne!(first.manifest_descriptor.digest(), &image.manifest_digest);
    assert_eq!(
        first.manifest_descriptor.digest(),
        &sha256_digest(&first.manifest_bytes)
    );
    let manifest: ImageManifest = serde_json::from_slice(&first.manifest_bytes).unwrap();
    assert_eq!(manifest.config(), image.manifest.config());
    for (sent, local) in manifest.layers().iter().zip(image.manifest.layers()) {
        assert_eq!(*sent.media_type(), MediaType::ImageLayerGzip);
        let blob = store.read_blob(sent.digest()).unwrap();
        assert_eq!(blob.len() as u64, sent.size());
        // The compressed blob holds the stored tar, whose digest the config lists.
        assert_eq!(sha256_digest(&gunzip(&blob)), *local.digest());
    }
    assert_eq!(first.blobs[1..], manifest.layers()[..]);

    // Again: nothing to compress, the same manifest.
    let second = store.distribution(&image).unwrap();
    assert_eq!(second.compressed, 0);
    assert_eq!(second.manifest_bytes, first.manifest_bytes);

    // A compressed blob that went missing is made again, to the same bytes.
    let lost = manifest.layers()[0].digest().clone();
    std::fs::remove_file(store.blob_path(&lost).unwrap()).unwrap();
    let third = store.distribution(&image).unwrap();
    assert_eq!(third.compressed, 1);
    assert_eq!(third.manifest_bytes, first.manifest_bytes);
    assert!(store.has_blob(&lost).unwrap());
}

#[test]
fn an_image_with_compressed_layers_goes_as_it_is_stored() {
    let (_dir, store) = state();
    let manifest = make_image(&store, "gz:1", &[&[("a", "aaaa")]]);
    let image = store.resolve("gz:1").unwrap();
    let sent = store.distribution(&image).unwrap();
    assert_eq!(sent.compressed, 0);
    assert_eq!(sent.manifest_descriptor, manifest);
    assert_eq!(
        sent.manifest_bytes,
        store.read_blob(manifest.digest()).unwrap()
    );
    assert!(!store.state_dir().join("compressed.json").exists());
}

#[test]
fn a_compressed_blob_lives_as_long_as_its_tar() {
    let (_dir, store) = state();
    let shared: &[(&str, &str)] = &[("shared", "s")];
    let a = built_image(&store, "a:1", &[shared, &[("a", "a")]]);
    let b = built_image(&store, "b:1", &[shared]);
    let sent_a = store.distribution(&a).unwrap();
    let gz_shared = sent_a.blobs[1].digest().clone();
    let gz_a = sent_a.blobs[2].digest().clone();
    assert_eq!(store.distribution(&b).unwrap().compressed, 0);

    // Nothing to prune: every compressed blob's tar is reachable.
    assert_eq!(store.prune(&[]).unwrap(), Garbage::default());

    // Removing `a` takes its own layer's compressed blob too, and keeps the shared one's.
    let removed = store.remove("a:1", &[]).unwrap();
    let removed: Vec<&Digest> = removed.blobs.iter().map(|b| &b.digest).collect();
    assert!(removed.contains(&&gz_a), "{removed:?}");
    assert!(!store.has_blob(&gz_a).unwrap());
    assert!(store.has_blob(&gz_shared).unwrap());
    let map = std::fs::read_to_string(store.state_dir().join("compressed.json")).unwrap();
    assert!(!map.contains(gz_a.digest()), "{map}");
    assert!(map.contains(gz_shared.digest()), "{map}");

    // Once `b` is untagged, prune takes the shared one as well.
    store.untag("b:1").unwrap();
    store.prune(&[]).unwrap();
    assert!(!store.has_blob(&gz_shared).unwrap());
    assert_eq!(blob_names(&store), Vec::<String>::new());
}

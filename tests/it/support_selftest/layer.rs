//! Self-tests of `tests::layer::LayerBuilder` and `tests::gnutar`: what a description promises
//! (`expected_manifest`) is what GNU tar extracts from the bytes it writes.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use tests::gnutar::{create_with_gnu_tar, extract_with_gnu_tar, list_with_gnu_tar};
use tests::layer::{DEFAULT_MTIME, LayerBuilder, OPAQUE_MARKER};
use tests::manifest::{Kind, Manifest, assert_same};

/// One entry of every kind and most properties a layer can carry.
fn every_kind_of_entry() -> LayerBuilder {
    let long_dir = "d".repeat(90);
    LayerBuilder::new()
        .dir("bin", 0o755)
        .file("bin/tool", 0o4755, b"#!/bin/sh\necho hi\n")
        .xattr(
            "security.capability",
            b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
        )
        .hardlink("bin/tool-link", "bin/tool")
        .symlink("bin/sh", "tool")
        .symlink("abs", "/etc/passwd")
        .dir("home", 0o755)
        .dir("home/user", 0o700)
        .owner(1000, 1000)
        .mtime(1_000_000_000)
        .file("home/user/notes", 0o640, b"mine\n")
        .owner(1000, 100)
        .xattr("user.test", b"value")
        .xattr("trusted.note", b"\x00binary\xff")
        .dir("tmp", 0o1777)
        .dir("dev", 0o755)
        .char_dev("dev/null", 1, 3)
        .mode(0o666)
        .block_dev("dev/loop0", 7, 0)
        .fifo("dev/fifo")
        .dir("gone", 0o755)
        .whiteout("gone/file")
        .opaque("gone")
        .dir(&long_dir, 0o755)
        .file(
            format!("{long_dir}/{}", "f".repeat(60)),
            0o644,
            b"long name\n",
        )
        .file(OsStr::from_bytes(b"caf\xe9"), 0o644, b"latin-1\n")
        .with_xattrs([("user.a", b"1"), ("user.b", b"2")])
}

#[test]
fn gnu_tar_extracts_a_layer_to_what_it_describes() -> anyhow::Result<()> {
    let layer = every_kind_of_entry();
    let dest = tempfile::tempdir()?;
    extract_with_gnu_tar(&layer.clone().finish(), dest.path())?;
    assert_same(&layer.expected_manifest(), &Manifest::of_dir(dest.path())?);
    Ok(())
}

#[test]
fn gnu_tar_extracts_the_gzip_layer_to_the_same_tree() -> anyhow::Result<()> {
    let layer = every_kind_of_entry();
    let gz = layer.clone().finish_gzip();
    assert_eq!(gz[..2], [0x1f, 0x8b]);
    let dest = tempfile::tempdir()?;
    extract_with_gnu_tar(&gz, dest.path())?;
    assert_same(&layer.expected_manifest(), &Manifest::of_dir(dest.path())?);
    Ok(())
}

#[test]
fn expected_manifest_pins_the_properties_a_test_relies_on() {
    let manifest = every_kind_of_entry().expected_manifest();
    let get = |path: &str| {
        manifest
            .get(path)
            .unwrap_or_else(|| panic!("{path} described"))
    };
    assert_eq!(get("bin/tool").mode, 0o4755);
    assert_eq!(get("tmp").mode, 0o1777);
    assert_eq!(
        get("bin/tool-link").hardlink_group,
        Some(PathBuf::from("bin/tool"))
    );
    assert_eq!(
        get("bin/tool").hardlink_group,
        Some(PathBuf::from("bin/tool"))
    );
    assert_eq!(
        (get("home/user").uid, get("home/user").mtime),
        (1000, Some(1_000_000_000))
    );
    assert_eq!(get("home").mtime, Some(DEFAULT_MTIME as i64));
    assert_eq!(get("dev/loop0").kind, Kind::BlockDevice);
    assert_eq!(get("gone/.wh.file").kind, Kind::File);
    assert!(manifest.get(format!("gone/{OPAQUE_MARKER}")).is_some());
}

#[test]
fn later_entries_replace_earlier_ones_and_unlink_them_from_hardlink_groups() -> anyhow::Result<()> {
    let layer = LayerBuilder::new()
        .file("a", 0o644, b"old")
        .hardlink("b", "a")
        .file("a", 0o600, b"new");
    let expected = layer.expected_manifest();
    assert_eq!(
        expected.get("a").and_then(|e| e.hardlink_group.clone()),
        None
    );
    assert_eq!(expected.get("b").and_then(|e| e.size), Some(3));
    let dest = tempfile::tempdir()?;
    extract_with_gnu_tar(&layer.finish(), dest.path())?;
    assert_same(&expected, &Manifest::of_dir(dest.path())?);
    Ok(())
}

#[test]
fn xattrs_are_written_as_pax_schily_records_before_their_entry() -> anyhow::Result<()> {
    let tar = LayerBuilder::new()
        .file("f", 0o644, b"")
        .xattr("user.test", b"value")
        .file("g", 0o644, b"")
        .finish();
    let mut archive = tar::Archive::new(tar.as_slice());
    let mut seen = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let mut records = Vec::new();
        if let Some(extensions) = entry.pax_extensions()? {
            for extension in extensions {
                let extension = extension?;
                records.push((
                    extension.key()?.to_owned(),
                    extension.value_bytes().to_vec(),
                ));
            }
        }
        seen.push((entry.path()?.into_owned(), records));
        std::io::copy(&mut entry, &mut std::io::sink())?;
    }
    assert_eq!(
        seen,
        [
            (
                PathBuf::from("f"),
                vec![("SCHILY.xattr.user.test".to_owned(), b"value".to_vec())]
            ),
            (PathBuf::from("g"), vec![]),
        ]
    );
    Ok(())
}

#[test]
fn whiteout_and_opaque_are_marker_files_gnu_tar_lists_verbatim() -> anyhow::Result<()> {
    let tar = LayerBuilder::new()
        .dir("d", 0o755)
        .whiteout("d/deleted")
        .opaque("d")
        .whiteout("top")
        .finish();
    let listing = list_with_gnu_tar(&tar)?;
    let names: Vec<&str> = listing
        .iter()
        .map(|line| line.rsplit(' ').next().unwrap_or_default())
        .collect();
    assert_eq!(names, ["d/", "d/.wh.deleted", "d/.wh..wh..opq", ".wh.top"]);
    Ok(())
}

#[test]
fn layers_are_byte_for_byte_reproducible() {
    assert_eq!(
        every_kind_of_entry().finish(),
        every_kind_of_entry().finish()
    );
}

#[test]
fn gnu_tar_round_trip_keeps_the_manifest() -> anyhow::Result<()> {
    let layer = every_kind_of_entry();
    let first = tempfile::tempdir()?;
    extract_with_gnu_tar(&layer.finish(), first.path())?;
    let archive = create_with_gnu_tar(first.path())?;
    let second = tempfile::tempdir()?;
    extract_with_gnu_tar(&archive, second.path())?;
    assert_same(
        &Manifest::of_dir(first.path())?,
        &Manifest::of_dir(second.path())?,
    );
    // Sorted by name, and members are named relative to the directory.
    let listing = list_with_gnu_tar(&archive)?;
    assert!(listing[0].ends_with(" ./"), "{}", listing[0]);
    assert!(
        listing[1].ends_with(" ./abs -> /etc/passwd"),
        "{}",
        listing[1]
    );
    Ok(())
}

#[test]
fn extract_reports_tar_stderr_on_failure() -> anyhow::Result<()> {
    let dest = tempfile::tempdir()?;
    let garbage = vec![b'x'; 2048];
    let err = extract_with_gnu_tar(&garbage, dest.path()).expect_err("garbage is not a tar");
    let message = format!("{err:#}");
    assert!(
        message.contains("does not look like a tar archive"),
        "{message}"
    );
    Ok(())
}

#[test]
fn finish_gzip_is_the_gzip_of_finish() -> anyhow::Result<()> {
    let gz = every_kind_of_entry().finish_gzip();
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(gz.as_slice()).read_to_end(&mut plain)?;
    assert_eq!(plain, every_kind_of_entry().finish());
    Ok(())
}

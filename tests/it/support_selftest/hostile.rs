//! Self-tests of `tests::layer::hostile`: each hostile archive contains what its name says, as
//! GNU tar (`tar -tvf`) and the `tar` crate see it. Only archives that cannot write outside the
//! destination are ever extracted, and only into a temporary directory.

use std::io::{self, Read, Write};
use std::time::Instant;

use anyhow::Context;
use flate2::read::GzDecoder;
use tests::gnutar::{extract_with_gnu_tar, list_with_gnu_tar};
use tests::layer::hostile;

/// The member names (and link targets) GNU tar lists: what follows the mode, owner, size, date
/// and time columns of `tar -tv --full-time`. The name may itself contain spaces.
fn gnu_tar_names(tar: &[u8]) -> anyhow::Result<Vec<String>> {
    Ok(list_with_gnu_tar(tar)?
        .iter()
        .map(|line| {
            let mut rest = line.as_str();
            for _ in 0..5 {
                rest = rest.trim_start();
                rest = &rest[rest.find(' ').unwrap_or(rest.len())..];
            }
            rest.trim_start().to_owned()
        })
        .collect())
}

/// A member's name and, for links, its target, as raw bytes.
type RawName = (Vec<u8>, Option<Vec<u8>>);

/// Raw names and link targets as the `tar` crate reads them (without its path sanitising).
fn raw_names(tar: &[u8]) -> anyhow::Result<Vec<RawName>> {
    let mut archive = tar::Archive::new(tar);
    let mut out = Vec::new();
    for entry in archive.entries()? {
        let entry = entry?;
        out.push((
            entry.path_bytes().into_owned(),
            entry.link_name_bytes().map(|l| l.into_owned()),
        ));
    }
    Ok(out)
}

#[test]
fn escape_archives_really_contain_escaping_names() -> anyhow::Result<()> {
    assert_eq!(gnu_tar_names(&hostile::parent_dir_escape())?, ["../x"]);
    assert_eq!(gnu_tar_names(&hostile::absolute_path())?, ["/abs/x"]);
    assert_eq!(
        gnu_tar_names(&hostile::nested_parent_escape())?,
        ["a/", "a/../../x"]
    );
    assert_eq!(
        raw_names(&hostile::parent_dir_escape())?,
        [(b"../x".to_vec(), None)]
    );
    assert_eq!(
        raw_names(&hostile::absolute_path())?,
        [(b"/abs/x".to_vec(), None)]
    );
    Ok(())
}

#[test]
fn hardlink_archives_point_outside_or_nowhere() -> anyhow::Result<()> {
    assert_eq!(
        gnu_tar_names(&hostile::hardlink_outside())?,
        ["link link to ../../etc/passwd"]
    );
    assert_eq!(
        raw_names(&hostile::hardlink_outside())?,
        [(b"link".to_vec(), Some(b"../../etc/passwd".to_vec()))]
    );
    assert_eq!(
        gnu_tar_names(&hostile::hardlink_missing_target())?,
        ["link link to missing"]
    );
    // Safe to extract: the target does not exist anywhere, so GNU tar must fail to link it.
    let dest = tempfile::tempdir()?;
    let err = extract_with_gnu_tar(&hostile::hardlink_missing_target(), dest.path())
        .expect_err("a hard link to nothing cannot be extracted");
    assert!(format!("{err:#}").contains("Cannot hard link"), "{err:#}");
    Ok(())
}

#[test]
fn write_through_archives_put_a_file_below_an_escaping_symlink() -> anyhow::Result<()> {
    assert_eq!(
        gnu_tar_names(&hostile::write_through_absolute_symlink())?,
        ["evil -> /etc", "evil/passwd"]
    );
    assert_eq!(
        gnu_tar_names(&hostile::write_through_relative_symlink())?,
        ["evil -> ../../..", "evil/passwd"]
    );
    Ok(())
}

#[test]
fn duplicate_entries_hold_two_versions_and_gnu_tar_keeps_the_last() -> anyhow::Result<()> {
    let tar = hostile::duplicate_entries();
    assert_eq!(gnu_tar_names(&tar)?, ["dup", "dup"]);
    let dest = tempfile::tempdir()?;
    extract_with_gnu_tar(&tar, dest.path())?;
    assert_eq!(std::fs::read(dest.path().join("dup"))?, b"second\n");
    Ok(())
}

#[test]
fn truncated_entry_claims_more_than_the_archive_holds() -> anyhow::Result<()> {
    let tar = hostile::truncated_entry(1 << 20, b"only this");
    assert_eq!(
        tar.len(),
        1024,
        "one header block and one data block, no trailer"
    );
    let err = list_with_gnu_tar(&tar).expect_err("the archive ends inside an entry");
    assert!(
        format!("{err:#}").contains("Unexpected EOF in archive"),
        "{err:#}"
    );

    let mut archive = tar::Archive::new(tar.as_slice());
    let mut entry = archive.entries()?.next().context("one entry")??;
    assert_eq!(entry.header().size()?, 1 << 20);
    let mut data = Vec::new();
    let read = entry.read_to_end(&mut data);
    assert!(
        read.is_err() || data.len() < 1 << 20,
        "the crate must not produce the claimed size"
    );
    Ok(())
}

#[test]
fn truncated_gzip_ends_mid_stream() -> anyhow::Result<()> {
    let gz = hostile::truncated_gzip_layer();
    let mut plain = Vec::new();
    let err = GzDecoder::new(gz.as_slice())
        .read_to_end(&mut plain)
        .expect_err("the stream is cut");
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    let err = list_with_gnu_tar(&gz).expect_err("GNU tar sees the cut too");
    assert!(
        format!("{err:#}").contains("unexpected end of file"),
        "{err:#}"
    );
    Ok(())
}

#[test]
fn corrupt_crc_gzip_inflates_completely_and_then_fails_its_check() -> anyhow::Result<()> {
    let gz = hostile::corrupt_crc_gzip_layer();
    let mut plain = Vec::new();
    GzDecoder::new(gz.as_slice())
        .read_to_end(&mut plain)
        .expect_err("the CRC does not match");
    // 512-byte header + 64 KiB file, a directory header, and the two end blocks.
    assert_eq!(
        plain.len(),
        512 + 65536 + 512 + 1024,
        "all data came out before the check"
    );
    let err = list_with_gnu_tar(&gz).expect_err("GNU tar's gzip checks the CRC");
    assert!(format!("{err:#}").contains("crc error"), "{err:#}");
    Ok(())
}

/// Counts bytes and throws them away, to measure a stream without holding it.
#[derive(Default)]
struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn zero_bomb_is_small_and_inflates_to_one_huge_file() -> anyhow::Result<()> {
    // Two whole repeated chunks and a remainder, small enough to inflate in a debug build
    // (about 5 MB/s); `GzDecoder` checks the combined CRC and the length at the end.
    const SIZE: u64 = (2 << 20) + 12_345;
    let gz = hostile::zero_bomb(SIZE);
    assert!(
        gz.len() < (SIZE / 200) as usize,
        "{} bytes compressed",
        gz.len()
    );
    let mut archive = tar::Archive::new(GzDecoder::new(gz.as_slice()));
    let mut entries = archive.entries()?;
    let mut entry = entries.next().context("one entry")??;
    assert_eq!(&*entry.path_bytes(), b"zeros");
    let mut counter = Counter::default();
    io::copy(&mut entry, &mut counter)?;
    assert_eq!(counter.0, SIZE);
    drop(entry);
    assert!(entries.next().is_none());
    Ok(())
}

#[test]
fn zero_bomb_streams_sizes_that_would_not_fit_in_memory() -> anyhow::Result<()> {
    // Bigger than the memory of the machines this runs on (23 GiB), and built in well under a
    // second: the writer holds one compressed chunk, whatever the size.
    const SIZE: u64 = 64 << 30;
    let started = Instant::now();
    let mut counter = Counter::default();
    hostile::write_zero_bomb(&mut counter, SIZE)?;
    let elapsed = started.elapsed();
    eprintln!(
        "64 GiB zero bomb: {} compressed bytes in {elapsed:?}",
        counter.0
    );
    assert!(counter.0 < SIZE / 500, "{} bytes compressed", counter.0);
    Ok(())
}

#[test]
fn gzip_with_zeros_inflates_to_prefix_and_zeros() -> anyhow::Result<()> {
    let mut gz = Vec::new();
    hostile::write_gzip_with_zeros(&mut gz, b"prefix", (1 << 20) + 7)?;
    let mut plain = Vec::new();
    GzDecoder::new(gz.as_slice()).read_to_end(&mut plain)?;
    assert_eq!(plain.len(), 6 + (1 << 20) + 7);
    assert_eq!(&plain[..6], b"prefix");
    assert!(plain[6..].iter().all(|&b| b == 0));
    Ok(())
}

#[test]
fn gzip_of_zeros_is_an_archive_that_ends_at_once() -> anyhow::Result<()> {
    let gz = hostile::gzip_of_zeros(1 << 20);
    let mut plain = Vec::new();
    GzDecoder::new(gz.as_slice()).read_to_end(&mut plain)?;
    assert_eq!(plain, vec![0u8; 1 << 20]);
    assert_eq!(gnu_tar_names(&gz)?, Vec::<String>::new());
    Ok(())
}

#[test]
fn many_entries_holds_that_many_tiny_files() -> anyhow::Result<()> {
    let tar = hostile::many_entries(10_000);
    // A directory header, a header per file, and the two end blocks.
    assert_eq!(tar.len(), (1 + 10_000 + 2) * 512);
    let names = gnu_tar_names(&tar)?;
    assert_eq!(names.len(), 10_001);
    assert_eq!(names[0], "many/");
    assert_eq!(names[10_000], "many/00009999");
    assert_eq!(gnu_tar_names(&hostile::many_entries_gzip(100))?.len(), 101);
    Ok(())
}

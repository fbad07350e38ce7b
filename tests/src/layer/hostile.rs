//! Ready-made malicious or broken layers (path escapes, links out of the tree, truncation, bad
//! gzip, bombs) that an importer must refuse or contain; each says what it contains, not what the
//! importer should do about it.

use std::io::{self, Write};

use flate2::{Compress, Compression, Crc, FlushCompress, Status};
use tar::{EntryType, Header};

use super::{DEFAULT_MTIME, LayerBuilder, gzip, raw_header};

/// A layer with one file named `../x`: extracting it naively writes next to the destination.
pub fn parent_dir_escape() -> Vec<u8> {
    LayerBuilder::new()
        .raw_file("../x", 0o644, b"escaped\n")
        .finish()
}

/// A layer with one file named `/abs/x`: extracting it naively writes to the host's `/abs`.
pub fn absolute_path() -> Vec<u8> {
    LayerBuilder::new()
        .raw_file("/abs/x", 0o644, b"absolute\n")
        .finish()
}

/// A layer with a directory `a` and a file `a/../../x`, whose `..` only escapes once `a` exists,
/// so a check of the first component alone misses it.
pub fn nested_parent_escape() -> Vec<u8> {
    LayerBuilder::new()
        .dir("a", 0o755)
        .raw_file("a/../../x", 0o644, b"escaped\n")
        .finish()
}

/// A layer with two regular files both named `dup`, first with content `first\n`, then
/// `second\n`; tar semantics say the later one wins.
pub fn duplicate_entries() -> Vec<u8> {
    LayerBuilder::new()
        .file("dup", 0o644, b"first\n")
        .file("dup", 0o644, b"second\n")
        .finish()
}

/// A layer with a hard link `link` whose target is `../../etc/passwd`, outside the layer.
pub fn hardlink_outside() -> Vec<u8> {
    LayerBuilder::new()
        .raw_hardlink("link", "../../etc/passwd")
        .finish()
}

/// A layer with a hard link `link` to `missing`, a path the archive never contains.
pub fn hardlink_missing_target() -> Vec<u8> {
    LayerBuilder::new().raw_hardlink("link", "missing").finish()
}

/// A layer with a symlink `evil -> /etc` followed by a file `evil/passwd`: an extractor that
/// follows the symlink overwrites the host's `/etc/passwd`.
pub fn write_through_absolute_symlink() -> Vec<u8> {
    write_through_symlink("/etc")
}

/// A layer with a symlink `evil -> ../../..` followed by a file `evil/passwd`: an extractor that
/// follows the symlink writes three levels above the destination.
pub fn write_through_relative_symlink() -> Vec<u8> {
    write_through_symlink("../../..")
}

fn write_through_symlink(target: &str) -> Vec<u8> {
    LayerBuilder::new()
        .raw_symlink("evil", target)
        // The tar crate accepts `evil/passwd` as a name: it is the symlink that makes it hostile.
        .file("evil/passwd", 0o644, b"root::0:0:owned:/:/bin/sh\n")
        .finish()
}

/// A tar whose single entry `big` claims `claimed_size` bytes but is followed by only `data`
/// (padded to a block) and then nothing: no further blocks, no end-of-archive marker.
pub fn truncated_entry(claimed_size: u64, data: &[u8]) -> Vec<u8> {
    assert!(
        claimed_size > data.len() as u64,
        "a truncated entry must claim more than it carries"
    );
    let header = raw_header(b"big", EntryType::Regular, 0o644, claimed_size, b"");
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(512), 0);
    out
}

/// The first half of `gzip` (rounded down): a stream that ends without its final block and
/// trailer, as a download cut off mid-way.
pub fn cut_in_middle(gzip: &[u8]) -> Vec<u8> {
    gzip[..gzip.len() / 2].to_vec()
}

/// `gzip` with the CRC-32 in its trailer inverted: every byte inflates, and only the final check
/// fails. Assumes a single-member stream, as `gzip` and `LayerBuilder::finish_gzip` write.
pub fn corrupt_crc(gzip: &[u8]) -> Vec<u8> {
    assert!(gzip.len() >= 18, "too short to be a gzip stream");
    let mut out = gzip.to_vec();
    // The trailer is CRC-32 (4 bytes, little-endian) then ISIZE (4 bytes).
    let crc = out.len() - 8;
    for byte in &mut out[crc..crc + 4] {
        *byte = !*byte;
    }
    out
}

/// A small layer (a file `a` and a directory `d`) gzipped and then cut in the middle.
pub fn truncated_gzip_layer() -> Vec<u8> {
    cut_in_middle(&sample_layer().finish_gzip())
}

/// The same small layer as `truncated_gzip_layer`, complete but with a corrupt CRC.
pub fn corrupt_crc_gzip_layer() -> Vec<u8> {
    corrupt_crc(&sample_layer().finish_gzip())
}

fn sample_layer() -> LayerBuilder {
    // Enough content that the half-way cut lands inside the deflate data, not in the header.
    let content: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    LayerBuilder::new()
        .file("a", 0o644, content)
        .dir("d", 0o755)
}

/// Writes a gzip-compressed layer holding one regular file `zeros` of `size` zero bytes; the
/// compressed output is about a thousandth of `size`, produced in constant memory and time
/// proportional to the output, so a layer that inflates to terabytes costs seconds.
pub fn write_zero_bomb(out: impl Write, size: u64) -> io::Result<()> {
    let mut header = Header::new_ustar();
    header.set_path("zeros")?;
    header.set_entry_type(EntryType::Regular);
    header.set_mode(0o644);
    header.set_mtime(DEFAULT_MTIME);
    header.set_size(size);
    header.set_cksum();
    // After the header everything is zeros: the data, its padding, and the two end blocks.
    write_gzip_with_zeros(out, header.as_bytes(), size.next_multiple_of(512) + 1024)
}

/// Writes a gzip-compressed layer holding one regular file `bytes` of `size` copies of `byte`:
/// a bomb as well compressed as `write_zero_bomb`'s whose content no backend can store as holes.
pub fn write_byte_bomb(out: impl Write, byte: u8, size: u64) -> io::Result<()> {
    let mut header = Header::new_ustar();
    header.set_path("bytes")?;
    header.set_entry_type(EntryType::Regular);
    header.set_mode(0o644);
    header.set_mtime(DEFAULT_MTIME);
    header.set_size(size);
    header.set_cksum();
    let tail = size.next_multiple_of(512) - size + 1024;
    write_gzip_with_runs(out, header.as_bytes(), &[(byte, size), (0, tail)])
}

/// `write_byte_bomb` into memory.
pub fn byte_bomb(byte: u8, size: u64) -> Vec<u8> {
    let mut out = Vec::new();
    write_byte_bomb(&mut out, byte, size).expect("writing into memory cannot fail");
    out
}

/// `write_zero_bomb` into memory; keep `size` to what a test can afford to inflate.
pub fn zero_bomb(size: u64) -> Vec<u8> {
    let mut out = Vec::new();
    write_zero_bomb(&mut out, size).expect("writing into memory cannot fail");
    out
}

/// A gzip stream (not a tar) of `size` zero bytes, made like `write_zero_bomb`. As a layer it is
/// an archive that ends at its first block, followed by a huge run of trailing zeros.
pub fn write_gzip_of_zeros(out: impl Write, size: u64) -> io::Result<()> {
    write_gzip_with_zeros(out, &[], size)
}

/// `write_gzip_of_zeros` into memory.
pub fn gzip_of_zeros(size: u64) -> Vec<u8> {
    let mut out = Vec::new();
    write_gzip_of_zeros(&mut out, size).expect("writing into memory cannot fail");
    out
}

/// The uncompressed run of zeros that is deflated once and then repeated.
const ZERO_CHUNK: usize = 1 << 20;

/// A minimal gzip member header: deflate, no flags, no mtime, unknown OS.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// Writes one gzip member whose content is `prefix` followed by `zeros` zero bytes.
pub fn write_gzip_with_zeros(out: impl Write, prefix: &[u8], zeros: u64) -> io::Result<()> {
    write_gzip_with_runs(out, prefix, &[(0, zeros)])
}

/// Writes one gzip member whose content is `prefix` followed by each run of `(byte, count)`.
///
/// Each part is deflated with a full flush, which byte-aligns the output and clears the
/// compressor's history; the deflate bytes of a chunk of one byte therefore do not depend on
/// what came before, so they are computed once and written as often as needed, and the CRC is
/// extended with `Crc::combine` instead of hashing every byte. The rejected alternative, a
/// `GzEncoder` fed from `io::repeat(0)`, really compresses every byte: about 3 MB/s in the
/// unoptimized builds tests run in, i.e. six minutes per GiB.
pub fn write_gzip_with_runs(
    mut out: impl Write,
    prefix: &[u8],
    runs: &[(u8, u64)],
) -> io::Result<()> {
    let mut deflate = Compress::new(Compression::default(), false);
    let mut crc = Crc::new();
    let mut buf = Vec::new();
    out.write_all(&GZIP_HEADER)?;

    deflate_all(&mut deflate, prefix, FlushCompress::Full, &mut buf)?;
    out.write_all(&buf)?;
    crc.update(prefix);

    let mut length = prefix.len() as u64;
    for &(byte, count) in runs {
        let chunks = count / ZERO_CHUNK as u64;
        let rest = (count % ZERO_CHUNK as u64) as usize;
        if chunks > 0 {
            let chunk = vec![byte; ZERO_CHUNK];
            deflate_all(&mut deflate, &chunk, FlushCompress::Full, &mut buf)?;
            let mut chunk_crc = Crc::new();
            chunk_crc.update(&chunk);
            for _ in 0..chunks {
                out.write_all(&buf)?;
                crc.combine(&chunk_crc);
            }
        }
        let tail = vec![byte; rest];
        deflate_all(&mut deflate, &tail, FlushCompress::Full, &mut buf)?;
        out.write_all(&buf)?;
        crc.update(&tail);
        length += count;
    }
    deflate_all(&mut deflate, &[], FlushCompress::Finish, &mut buf)?;
    out.write_all(&buf)?;

    // The trailer: CRC-32 of the content, then its length modulo 2^32 (RFC 1952).
    out.write_all(&crc.sum().to_le_bytes())?;
    out.write_all(&(length as u32).to_le_bytes())?;
    out.flush()
}

/// Deflates all of `input` into `out` (cleared first) and then flushes with `flush`.
fn deflate_all(
    deflate: &mut Compress,
    input: &[u8],
    flush: FlushCompress,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    out.clear();
    let start = deflate.total_in();
    loop {
        out.reserve(64 * 1024);
        let consumed = (deflate.total_in() - start) as usize;
        let status = deflate
            .compress_vec(&input[consumed..], out, flush)
            .map_err(io::Error::other)?;
        let all_in = (deflate.total_in() - start) as usize == input.len();
        // A flush is complete once all input is taken and the output did not fill the space it
        // was given; a finish, once the stream has ended.
        let done = match flush {
            FlushCompress::Finish => status == Status::StreamEnd,
            _ => all_in && out.len() < out.capacity(),
        };
        if done {
            return Ok(());
        }
    }
}

/// Writes an uncompressed layer with a directory `many` holding `count` empty files named
/// `many/00000000`, `many/00000001`, ...: 512 bytes of header per entry, streamed.
pub fn write_many_entries(out: impl Write, count: u64) -> io::Result<()> {
    let mut builder = tar::Builder::new(out);
    let mut header = Header::new_ustar();
    header.set_entry_type(EntryType::Directory);
    header.set_mode(0o755);
    header.set_mtime(DEFAULT_MTIME);
    header.set_size(0);
    builder.append_data(&mut header, "many/", io::empty())?;
    for i in 0..count {
        let mut header = Header::new_ustar();
        header.set_entry_type(EntryType::Regular);
        header.set_mode(0o644);
        header.set_mtime(DEFAULT_MTIME);
        header.set_size(0);
        builder.append_data(&mut header, format!("many/{i:08}"), io::empty())?;
    }
    builder.into_inner()?.flush()
}

/// `write_many_entries` into memory (about `count` * 512 bytes).
pub fn many_entries(count: u64) -> Vec<u8> {
    let mut out = Vec::new();
    write_many_entries(&mut out, count).expect("writing into memory cannot fail");
    out
}

/// `many_entries`, gzipped: the tiny-file flood as a registry would serve it.
pub fn many_entries_gzip(count: u64) -> Vec<u8> {
    gzip(&many_entries(count))
}

//! `copy_sparse`: writing a file's content with holes where it has blocks of zeros, so that a
//! sparse file (or a long run of zeros in a layer) takes no disk where it has none.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

/// The block a hole is made of: the usual file system block. A block of zeros is skipped, not
/// written; the file's length is set at the end, so a file that ends in zeros ends in a hole.
pub const SPARSE_BLOCK: usize = 4096;

/// Bytes read at a time; consecutive blocks that are not zeros go out in one write.
const BUFFER: usize = 1 << 20;

/// Copies all of `from` into `to` (an empty file, written from offset 0) leaving holes for
/// blocks of zeros, and returns the bytes copied. `to`'s length is the bytes copied.
pub fn copy_sparse(from: &mut dyn Read, to: &File) -> io::Result<u64> {
    let mut buf = vec![0u8; BUFFER];
    let mut total = 0u64;
    loop {
        let n = read_full(from, &mut buf)?;
        if n == 0 {
            break;
        }
        let mut at = 0;
        while at < n {
            // Skip the zero blocks, then write the run of blocks that are not.
            let is_zero = |i: usize| all_zero(&buf[i..n.min(i + SPARSE_BLOCK)]);
            while at < n && is_zero(at) {
                at += SPARSE_BLOCK;
            }
            let start = at;
            while at < n && !is_zero(at) {
                at += SPARSE_BLOCK;
            }
            let end = at.min(n);
            if end > start {
                to.write_all_at(&buf[start..end], total + start as u64)?;
            }
        }
        total += n as u64;
        if n < buf.len() {
            break;
        }
    }
    to.set_len(total)?;
    Ok(total)
}

/// True if every byte of `b` (at most `SPARSE_BLOCK` long) is zero. A slice comparison is a
/// `memcmp`, which is fast even in the unoptimized builds tests run.
fn all_zero(b: &[u8]) -> bool {
    static ZEROS: [u8; SPARSE_BLOCK] = [0; SPARSE_BLOCK];
    b == &ZEROS[..b.len()]
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

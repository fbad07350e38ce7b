//! GNU's PAX sparse format 1.0 (`tar --sparse --format=posix`), which the tar crate does not
//! read: the entry's PAX records give the real name (`GNU.sparse.name`) and size
//! (`GNU.sparse.realsize`), and its data starts with the map of data segments (decimal lines:
//! a count, then an offset and a size per segment, padded to 512 bytes) followed by the
//! segments' bytes. Go's archive/tar reads it, so Docker does; without this a layer with such a
//! file would import as `GNUSparseFile.N/name` holding the map. The older 0.x versions keep
//! the map in PAX records; they are refused, not misread.

use std::io::{self, Read};

use crate::error::{Error, Result};

/// Most data segments one sparse file may list (each costs 16 bytes of memory here).
const MAX_SEGMENTS: usize = 1 << 20;

/// What the PAX records of a sparse entry say.
pub(crate) struct PaxSparse {
    /// The file's path in the layer.
    pub(crate) name: Option<Vec<u8>>,
    /// The file's size, holes included.
    pub(crate) realsize: u64,
}

/// The sparse records of `entry`, or `None` for an entry that is not a PAX sparse file.
pub(crate) fn pax_sparse<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Option<PaxSparse>> {
    let Some(exts) = entry
        .pax_extensions()
        .map_err(|e| Error::Invalid(format!("PAX header: {e}")))?
    else {
        return Ok(None);
    };
    let (mut major, mut minor, mut name, mut realsize) = (None, None, None, None);
    let mut any = false;
    for ext in exts {
        let ext = ext.map_err(|e| Error::Invalid(format!("PAX header: {e}")))?;
        let key = ext.key_bytes();
        let Some(key) = key.strip_prefix(b"GNU.sparse.") else {
            continue;
        };
        any = true;
        let value = ext.value_bytes();
        match key {
            b"major" => major = Some(value.to_vec()),
            b"minor" => minor = Some(value.to_vec()),
            b"name" => name = Some(value.to_vec()),
            b"realsize" => realsize = Some(number(value)?),
            _ => {}
        }
    }
    if !any {
        return Ok(None);
    }
    if major.as_deref() != Some(b"1") || minor.as_deref() != Some(b"0") {
        return Err(Error::Invalid(
            "PAX sparse file of a version before 1.0 (GNU.sparse.*): only 1.0 is read".into(),
        ));
    }
    let realsize =
        realsize.ok_or_else(|| Error::Invalid("PAX sparse file without a realsize".into()))?;
    Ok(Some(PaxSparse { name, realsize }))
}

fn number(v: &[u8]) -> Result<u64> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| Error::Invalid("bad number in a sparse map".into()))
}

/// The content of a PAX 1.0 sparse file read from its entry's data: zeros in the holes.
pub(crate) struct SparseContent<R> {
    inner: R,
    /// (offset, length) of each data segment, in order.
    map: Vec<(u64, u64)>,
    next: usize,
    pos: u64,
    realsize: u64,
}

impl<R: Read> SparseContent<R> {
    /// Reads the map at the start of `inner` (an entry's data of `stored` bytes).
    pub(crate) fn new(mut inner: R, stored: u64, realsize: u64) -> Result<SparseContent<R>> {
        let mut consumed = 0u64;
        let mut line = || -> Result<u64> {
            let mut digits = Vec::new();
            loop {
                let mut b = [0u8];
                inner
                    .read_exact(&mut b)
                    .map_err(|e| Error::Layer(format!("sparse map: {e}")))?;
                consumed += 1;
                if b[0] == b'\n' {
                    return number(&digits);
                }
                if digits.len() > 20 {
                    return Err(Error::Invalid("bad number in a sparse map".into()));
                }
                digits.push(b[0]);
            }
        };
        let count = line()?;
        if count > MAX_SEGMENTS as u64 {
            return Err(Error::Limit(format!(
                "sparse file of more than {MAX_SEGMENTS} segments"
            )));
        }
        let mut map = Vec::with_capacity(count as usize);
        let mut end = 0u64;
        let mut data = 0u64;
        for _ in 0..count {
            let (offset, len) = (line()?, line()?);
            let stop = offset.checked_add(len);
            if offset < end || stop.is_none_or(|s| s > realsize) {
                return Err(Error::Invalid(
                    "sparse map segments overlap or pass the end".into(),
                ));
            }
            end = offset + len;
            data += len;
            // GNU tar ends the map of a file that ends in a hole with an empty segment there.
            if len > 0 {
                map.push((offset, len));
            }
        }
        let padded = consumed.next_multiple_of(512);
        if padded + data != stored {
            return Err(Error::Invalid(format!(
                "sparse map lists {data} bytes of data, the entry holds {}",
                stored.saturating_sub(padded)
            )));
        }
        io::copy(&mut (&mut inner).take(padded - consumed), &mut io::sink())
            .map_err(|e| Error::Layer(format!("sparse map: {e}")))?;
        Ok(SparseContent {
            inner,
            map,
            next: 0,
            pos: 0,
            realsize,
        })
    }
}

impl<R: Read> Read for SparseContent<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.realsize || buf.is_empty() {
            return Ok(0);
        }
        let room = buf.len() as u64;
        let n = match self.map.get(self.next) {
            Some(&(offset, len)) if self.pos >= offset => {
                let want = (offset + len - self.pos).min(room) as usize;
                let n = self.inner.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                if self.pos + n as u64 == offset + len {
                    self.next += 1;
                }
                n
            }
            // A hole: up to the next segment or the end.
            next => {
                let stop = next.map_or(self.realsize, |&(offset, _)| offset);
                let n = (stop - self.pos).min(room) as usize;
                buf[..n].fill(0);
                n
            }
        };
        self.pos += n as u64;
        Ok(n)
    }
}

//! Replacing a file whole or not at all (`write_atomically`): the new content goes to a
//! temporary file in the same directory, which is synced and renamed over the target, and then
//! the directory is synced, so a crash leaves the old file or the new one, never a mix, and
//! the new name survives it. The image store, the build cache, `img save -o` and
//! `imgfs export -o` all write this way.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// What temporary files start with, so that leftovers of a killed writer can be recognised.
pub const TMP_PREFIX: &str = ".tmp-";

/// Writes `path` through `write`, atomically: `write` fills a new temporary file next to
/// `path`, created with permission bits `mode` (less the umask, as open(2) applies it); once it
/// returns `Ok`, the file is synced, renamed over `path`, and the directory synced. When
/// `write` fails, or any step does, the temporary file is removed and `path` is untouched.
///
/// Errors of the helper's own steps are `io::Error`s naming the file, converted into `E`.
pub fn write_atomically<T, E>(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&mut File) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<io::Error>,
{
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let (tmp, mut file) = create_temporary(dir, mode)?;
    let written = write(&mut file).and_then(|value| {
        file.sync_all()
            .map_err(|e| context(e, format!("cannot sync {}", tmp.display())))?;
        drop(file);
        fs::rename(&tmp, path).map_err(|e| {
            context(
                e,
                format!("cannot rename {} to {}", tmp.display(), path.display()),
            )
        })?;
        Ok(value)
    });
    let value = match written {
        Ok(value) => value,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| context(e, format!("cannot sync directory {}", dir.display())))?;
    Ok(value)
}

/// A new file in `dir` with a name nobody else has, created exclusively.
fn create_temporary(dir: &Path, mode: u32) -> io::Result<(PathBuf, File)> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let pid = std::process::id();
    loop {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!("{TMP_PREFIX}{pid}-{n}-{nanos:08x}"));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
        {
            Ok(file) => return Ok((tmp, file)),
            // A leftover of an earlier process with our pid; try the next name.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(context(
                    e,
                    format!("cannot create a temporary file in {}", dir.display()),
                ));
            }
        }
    }
}

/// `e` with `what` in front, keeping its kind.
fn context(e: io::Error, what: String) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_write_replaces_the_file_whole_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, "old").unwrap();
        write_atomically::<_, io::Error>(&path, 0o600, |f| f.write_all(b"new")).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_removes_the_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, "old").unwrap();
        let r = write_atomically(&path, 0o600, |f| {
            f.write_all(b"half")?;
            Err::<(), _>(io::Error::other("stopped"))
        });
        assert_eq!(r.unwrap_err().to_string(), "stopped");
        assert_eq!(fs::read_to_string(&path).unwrap(), "old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

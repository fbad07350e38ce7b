//! The content hash of COPY/ADD sources that the build cache keys on (`content_hash`).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use sha2::{Digest, Sha256};

use super::resolve::{Entry, Resolved, SourceTree, base_name};
use super::{ContextError, io_err, root};

/// A content hash of resolved sources for the build cache: sha256 over each source's name and,
/// for each file below it in sorted order, relative path, file type, permission bits, and the
/// sha256 of the content or the symlink target. Times, ownership and the context's location
/// on disk are left out, as in BuildKit's content-based cache keys, so a fresh checkout hits
/// the cache. File contents are hashed on several threads.
pub fn content_hash(tree: &SourceTree<'_>, resolved: &Resolved) -> Result<String, ContextError> {
    let mut lists = Vec::new();
    for src in &resolved.sources {
        lists.push(tree.entries(src)?);
    }
    let files: Vec<&Entry> = lists
        .iter()
        .flatten()
        .filter(|e| e.meta.file_type().is_file())
        .collect();
    let digests = digest_files(tree.root, &files)?;
    let mut digest_of: HashMap<&str, [u8; 32]> = HashMap::new();
    for (entry, digest) in files.iter().zip(digests) {
        digest_of.insert(entry.tree_rel.as_str(), digest);
    }

    let mut h = Sha256::new();
    let put = |h: &mut Sha256, bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    put(&mut h, if resolved.dest_is_dir { b"dir" } else { b"any" });
    for (src, entries) in resolved.sources.iter().zip(&lists) {
        put(&mut h, b"source");
        put(&mut h, base_name(&src.name).as_bytes());
        put(&mut h, if src.is_dir { b"d" } else { b"f" });
        for e in entries {
            let ft = e.meta.file_type();
            put(&mut h, e.rel.as_bytes());
            put(&mut h, &(e.meta.mode() & 0o7777).to_le_bytes());
            if !ft.is_symlink() {
                // Capabilities and other xattrs are copied, so they are part of the content.
                let host = tree.root.join(&e.tree_rel);
                for (name, value) in root::read_xattrs(&host).map_err(io_err(host))? {
                    put(&mut h, b"xattr");
                    put(&mut h, &name);
                    put(&mut h, &value);
                }
            }
            if ft.is_file() {
                put(&mut h, b"file");
                put(&mut h, &digest_of[e.tree_rel.as_str()]);
            } else if ft.is_dir() {
                put(&mut h, b"dir");
            } else if ft.is_symlink() {
                let host = tree.root.join(&e.tree_rel);
                let target = fs::read_link(&host).map_err(io_err(host))?;
                put(&mut h, b"symlink");
                put(&mut h, target.as_os_str().as_encoded_bytes());
            } else {
                put(&mut h, b"node");
                put(&mut h, &e.meta.rdev().to_le_bytes());
            }
        }
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

fn digest_files(root: &Path, files: &[&Entry]) -> Result<Vec<[u8; 32]>, ContextError> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<[u8; 32]>>> = Mutex::new(vec![None; files.len()]);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8)
        .min(files.len().max(1));
    let errors: Mutex<Vec<ContextError>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= files.len() {
                        break;
                    }
                    let path = root.join(&files[i].tree_rel);
                    match digest_file(&path, &mut buf) {
                        Ok(d) => results.lock().expect("no panics while locked")[i] = Some(d),
                        Err(e) => {
                            errors
                                .lock()
                                .expect("no panics while locked")
                                .push(io_err(path)(e));
                            break;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = errors.into_inner().expect("threads joined").pop() {
        return Err(e);
    }
    Ok(results
        .into_inner()
        .expect("threads joined")
        .into_iter()
        .map(|d| d.expect("every file digested when no error"))
        .collect())
}

fn digest_file(path: &Path, buf: &mut [u8]) -> io::Result<[u8; 32]> {
    let mut file = File::open(path)?;
    let mut h = Sha256::new();
    loop {
        let n = file.read(buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

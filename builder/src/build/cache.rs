//! The build cache: what a step produced, found by a key computed from everything the step's
//! result depends on, before running it.
//!
//! A key chains the parent step's key, the instruction after expansion, and the content hash of
//! the files it reads (`CacheKey::step`). The context's path on disk and file mtimes are not part
//! of it, so a moved checkout or a fresh clone still hits. A record holds the whole state after
//! the step (image config and layers), so a hit needs no work beyond reading one small file;
//! the layers' file trees are found again in the snapshot backend by chain ID, or applied from
//! their blobs when a later step needs them.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};

/// A step's cache key: a sha256 over its inputs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(String);

impl CacheKey {
    /// The key of a stage's starting point: the base image's manifest digest, a previous
    /// stage's key, or `scratch`.
    pub fn base(what: &str) -> CacheKey {
        CacheKey::of(&[b"base", what.as_bytes()])
    }

    /// The key of a step after `self`: `parts` are the step's expanded instruction and the
    /// digests of what it reads.
    pub fn step(&self, parts: &[&str]) -> CacheKey {
        let mut all: Vec<&[u8]> = vec![b"step", self.0.as_bytes()];
        all.extend(parts.iter().map(|p| p.as_bytes()));
        CacheKey::of(&all)
    }

    fn of(parts: &[&[u8]]) -> CacheKey {
        let mut h = Sha256::new();
        for p in parts {
            // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
            h.update((p.len() as u64).to_le_bytes());
            h.update(p);
        }
        CacheKey(hex::encode(h.finalize()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The subdirectory of `put_sum`'s digests.
const SUMS: &str = "sums";

/// Records under `<state>/cache/`, one JSON file per key, written atomically.
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn open(dir: &Path) -> io::Result<Cache> {
        fs::create_dir_all(dir)?;
        Ok(Cache {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, key: &CacheKey) -> PathBuf {
        self.dir.join(format!("{}.json", key.0))
    }

    /// The record under `key`, if there is one and it can be read; a damaged record is a miss.
    pub fn get<T: DeserializeOwned>(&self, key: &CacheKey) -> Option<T> {
        let bytes = fs::read(self.path(key)).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(key = key.as_str(), "ignoring a damaged cache record: {e}");
                None
            }
        }
    }

    /// Stores `value` under `key` atomically (`imgfs::atomic`), so a reader sees the old record
    /// or the new one.
    pub fn put<T: Serialize>(&self, key: &CacheKey, value: &T) -> io::Result<()> {
        let bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
        imgfs::atomic::write_atomically(&self.path(key), 0o600, |f| f.write_all(&bytes))
    }

    /// Every record, for `img du` and `img prune`.
    pub fn entries<T: DeserializeOwned>(&self) -> io::Result<Vec<(CacheKey, T)>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir)? {
            let e = e?;
            let name = e.file_name();
            let Some(key) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            let key = CacheKey(key.to_owned());
            if let Some(v) = self.get(&key) {
                out.push((key, v));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// The content digest remembered under `key` by `put_sum`, if any.
    pub fn sum(&self, key: &CacheKey) -> Option<String> {
        fs::read_to_string(self.dir.join(SUMS).join(key.as_str())).ok()
    }

    /// Remembers the content digest of what a `COPY --from` reads from a committed snapshot,
    /// under `<state>/cache/sums/`. A committed snapshot never changes, so neither does the
    /// digest of a path in it: a rebuild finds the step's record without mounting the snapshot
    /// to hash the files again.
    pub fn put_sum(&self, key: &CacheKey, digest: &str) -> io::Result<()> {
        let dir = self.dir.join(SUMS);
        fs::create_dir_all(&dir)?;
        imgfs::atomic::write_atomically(&dir.join(key.as_str()), 0o600, |f| {
            f.write_all(digest.as_bytes())
        })
    }

    /// Forgets every remembered digest (`img prune`): they only save work.
    pub fn clear_sums(&self) -> io::Result<()> {
        match fs::remove_dir_all(self.dir.join(SUMS)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    pub fn remove(&self, key: &CacheKey) -> io::Result<()> {
        match fs::remove_file(self.path(key)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_every_part_and_its_boundaries() {
        let base = CacheKey::base("scratch");
        assert_ne!(base.step(&["ab", "c"]), base.step(&["a", "bc"]));
        assert_eq!(
            base.step(&["RUN x"]),
            CacheKey::base("scratch").step(&["RUN x"])
        );
        assert_ne!(
            base.step(&["RUN x"]),
            CacheKey::base("busybox").step(&["RUN x"])
        );
    }

    #[test]
    fn a_record_survives_reopening_and_a_damaged_one_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let k = CacheKey::base("x");
        cache.put(&k, &vec![1u32, 2]).unwrap();
        let again = Cache::open(dir.path()).unwrap();
        assert_eq!(again.get::<Vec<u32>>(&k), Some(vec![1, 2]));
        fs::write(again.path(&k), b"{not json").unwrap();
        assert_eq!(again.get::<Vec<u32>>(&k), None);
    }
}

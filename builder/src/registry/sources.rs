//! `BlobSources`: which repositories of which registry are known to hold a blob, from earlier
//! pulls and pushes, so a push can mount a blob across repositories instead of uploading it.
//!
//! Kept in `<state>/registry-sources.json`, replaced whole by rename. It is a hint: a stale entry
//! costs one refused mount request, after which the blob is uploaded.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::RegistryError;

const FILE: &str = "registry-sources.json";
/// Repositories remembered per blob; the oldest are forgotten first.
const MAX_REPOS: usize = 8;

/// Blob digest -> `registry/repository` names that hold it.
#[derive(Debug, Default)]
pub struct BlobSources {
    path: PathBuf,
    blobs: BTreeMap<String, Vec<String>>,
}

impl BlobSources {
    /// Reads the record in `state_dir`; a missing or unreadable one is an empty record.
    pub fn open(state_dir: &Path) -> BlobSources {
        let path = state_dir.join(FILE);
        let blobs = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        BlobSources { path, blobs }
    }

    /// Notes that `repository` of `registry` holds `digests`.
    pub fn record<'a>(
        &mut self,
        registry: &str,
        repository: &str,
        digests: impl IntoIterator<Item = &'a str>,
    ) {
        let name = format!("{registry}/{repository}");
        for digest in digests {
            let repos = self.blobs.entry(digest.to_string()).or_default();
            repos.retain(|r| *r != name);
            repos.push(name.clone());
            if repos.len() > MAX_REPOS {
                repos.remove(0);
            }
        }
    }

    /// Other repositories of `registry` known to hold `digest`, most recent first.
    pub fn candidates(&self, registry: &str, repository: &str, digest: &str) -> Vec<String> {
        let prefix = format!("{registry}/");
        let mut seen = BTreeSet::new();
        self.blobs
            .get(digest)
            .into_iter()
            .flatten()
            .rev()
            .filter_map(|name| name.strip_prefix(&prefix))
            .filter(|repo| *repo != repository && seen.insert(repo.to_string()))
            .map(str::to_string)
            .collect()
    }

    /// Writes the record (a synced temporary file renamed over the old one).
    pub fn save(&self) -> Result<(), RegistryError> {
        let io = |source| RegistryError::Io {
            path: self.path.clone(),
            source,
        };
        let bytes = serde_json::to_vec(&self.blobs).expect("a map of strings serializes");
        imgfs::atomic::write_atomically(&self.path, 0o600, |f| f.write_all(&bytes)).map_err(io)
    }
}

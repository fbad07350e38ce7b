//! The bounds img puts on every layer it applies (`LayerLimits`), read from the state dir's
//! `config.json` and overridden by the options of `img pull|load|build|unpack`, and
//! `LimitedSnapshotter`, which applies every layer of a state dir's backend under them.
//!
//! The defaults, and why:
//! - `max_layer_ratio` 100: a layer may not expand past 100 times its compressed size. Real
//!   layers compress 2 to 10 times (text-heavy ones up to 20), and gzip cannot do better than
//!   about 1,000, which only long runs of one byte reach. Runs of zeros that the backend stores
//!   as holes do not count (a sparse file, a preallocated database), nor does the first 64 MiB
//!   (`imgfs::layer::limits::RATIO_FLOOR`), below which nothing is worth refusing.
//! - `min_free_space` 256 MiB: a layer may not take the store's file system past its free space
//!   less this reserve (holes again not counted), so a layer that does not fit fails at once,
//!   naming the limit, instead of filling the disk under the rest of the machine. img's own
//!   metadata needs far less (imgfs::space keeps 6 MiB), and a larger default would take a
//!   real share of the small volumes CI jobs and pods give a builder.
//! - `max_layer_entries` 1,000,000: a Debian base layer has about 10,000 entries and large
//!   toolchain or `node_modules` layers a few hundred thousand; every entry costs metadata
//!   records and time, so a flood of empty files is refused well before it costs minutes.
//! - `max_layer_size` 256 GiB of uncompressed tar, and of any one file: the decompression
//!   time a layer may cost however it is stored (zeros count here, and a sparse file counts
//!   at its full size, which the appliers read as zeros).

use std::path::{Path, PathBuf};

use imgfs::layer::{ExportReport, ImportLimits, LimitNames};
use imgfs::{AppliedLayer, Mounted, SnapshotInfo, Snapshotter, Usage};
use thiserror::Error;

/// The state dir's configuration file.
pub const CONFIG_FILE: &str = "config.json";

/// The bounds on each layer img applies. Also the shape of `<state>/config.json`, whose keys
/// are the fields (sizes as bytes or strings such as `"2GiB"`); a missing key keeps its default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LayerLimits {
    /// Most entries in one layer.
    pub max_layer_entries: u64,
    /// Most bytes of uncompressed (and not sparse) layer per byte of compressed layer; 0 for
    /// no bound.
    pub max_layer_ratio: u64,
    /// Most bytes of uncompressed tar in one layer, and of any one file in it.
    #[serde(with = "size")]
    pub max_layer_size: u64,
    /// Bytes a layer must leave free on the file system of the store it goes into.
    #[serde(with = "size")]
    pub min_free_space: u64,
}

impl Default for LayerLimits {
    fn default() -> Self {
        LayerLimits {
            max_layer_entries: 1_000_000,
            max_layer_ratio: 100,
            max_layer_size: 256 << 30,
            min_free_space: 256 << 20,
        }
    }
}

/// How a refused layer's error names what raises the limit.
pub static LIMIT_NAMES: LimitNames = LimitNames {
    entries: "--max-layer-entries / config \"max_layer_entries\"",
    bytes: "--max-layer-size / config \"max_layer_size\"",
    ratio: "--max-layer-ratio / config \"max_layer_ratio\"",
    stored: "--min-free-space / config \"min_free_space\"",
    path: "4096 bytes",
};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("failed to read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

impl LayerLimits {
    /// The limits `<dir>/config.json` sets, or the defaults when there is no such file.
    pub fn read_config(dir: &Path) -> Result<LayerLimits, ConfigError> {
        let path = dir.join(CONFIG_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| ConfigError::Parse { path, source })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LayerLimits::default()),
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    /// These limits for a layer going into a store on a file system with `available` bytes
    /// free (`None`: not known, not checked).
    pub fn import_limits(&self, available: Option<u64>) -> ImportLimits {
        ImportLimits {
            max_entries: self.max_layer_entries,
            max_bytes: self.max_layer_size,
            max_ratio: self.max_layer_ratio,
            max_stored: available.map(|a| a.saturating_sub(self.min_free_space)),
            names: &LIMIT_NAMES,
            ..ImportLimits::default()
        }
    }
}

/// The layer limit options of `img pull|load|import|build|unpack`; each one set replaces the config's.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct LimitArgs {
    /// Refuse a layer with more entries than this [default: "max_layer_entries" in the state
    /// dir's config.json, or 1000000].
    #[arg(long, value_name = "N")]
    pub max_layer_entries: Option<u64>,
    /// Refuse a layer that expands past N times its compressed size, not counting runs of
    /// zeros stored as holes; 0 for no limit [default: "max_layer_ratio" in config.json, or
    /// 100].
    #[arg(long, value_name = "N")]
    pub max_layer_ratio: Option<u64>,
    /// Refuse a layer whose uncompressed tar, or any file in it (a sparse one at its full
    /// size), is larger than this (e.g. 512GiB) [default: "max_layer_size" in config.json, or
    /// 256GiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_layer_size: Option<u64>,
    /// Refuse a layer that would leave less than this free on the store's file system (e.g.
    /// 500MiB, 0) [default: "min_free_space" in config.json, or 256MiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub min_free_space: Option<u64>,
}

impl LimitArgs {
    /// `base` with the options given replacing its values.
    pub fn over(&self, base: LayerLimits) -> LayerLimits {
        LayerLimits {
            max_layer_entries: self.max_layer_entries.unwrap_or(base.max_layer_entries),
            max_layer_ratio: self.max_layer_ratio.unwrap_or(base.max_layer_ratio),
            max_layer_size: self.max_layer_size.unwrap_or(base.max_layer_size),
            min_free_space: self.min_free_space.unwrap_or(base.min_free_space),
        }
    }
}

/// Parses a size: bytes, or a number with a unit, `K`/`KB`/`KiB` up to `T` (all powers of
/// 1024, as `docker build --shm-size` and `--memory` read them).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?} (bytes, or a number with K, M, G or T)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("invalid size {s:?}: unknown unit {unit:?}")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// Sizes in the config file: a number of bytes or a string `parse_size` reads.
mod size {
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match Size::deserialize(d)? {
            Size::Bytes(n) => Ok(n),
            Size::Text(t) => super::parse_size(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// A backend whose every `apply` runs under `limits` (the caller's are replaced: every layer
/// that enters a state dir passes the same checks, whichever command brought it), with the
/// room left on the file system of `dir`, the backend's directory, measured at each layer.
pub struct LimitedSnapshotter {
    pub inner: Box<dyn Snapshotter>,
    pub limits: LayerLimits,
    pub dir: PathBuf,
}

/// The bytes an unprivileged process may still write on the file system of `dir`.
fn available(dir: &Path) -> Option<u64> {
    imgfs::space::free_bytes(dir).ok()
}

impl Snapshotter for LimitedSnapshotter {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    fn prepare(&self, key: &str, parent: Option<&str>) -> imgfs::Result<SnapshotInfo> {
        self.inner.prepare(key, parent)
    }
    fn view(&self, key: &str, parent: &str) -> imgfs::Result<SnapshotInfo> {
        self.inner.view(key, parent)
    }
    fn commit(&self, name: &str, key: &str) -> imgfs::Result<SnapshotInfo> {
        self.inner.commit(name, key)
    }
    fn remove(&self, key: &str) -> imgfs::Result<()> {
        self.inner.remove(key)
    }
    fn stat(&self, key: &str) -> imgfs::Result<SnapshotInfo> {
        self.inner.stat(key)
    }
    fn walk(&self) -> imgfs::Result<Vec<SnapshotInfo>> {
        self.inner.walk()
    }
    fn usage(&self, key: &str) -> imgfs::Result<Usage> {
        self.inner.usage(key)
    }
    fn apply(
        &self,
        name: &str,
        parent: Option<&str>,
        layer: &mut dyn std::io::Read,
        _: &ImportLimits,
    ) -> imgfs::Result<AppliedLayer> {
        let limits = self.limits.import_limits(available(&self.dir));
        self.inner.apply(name, parent, layer, &limits)
    }
    fn diff(&self, key: &str, out: &mut dyn std::io::Write) -> imgfs::Result<ExportReport> {
        self.inner.diff(key, out)
    }
    fn export(&self, key: &str, out: &mut dyn std::io::Write) -> imgfs::Result<ExportReport> {
        self.inner.export(key, out)
    }
    fn mount(&self, key: &str, target: &Path) -> std::io::Result<Box<dyn Mounted>> {
        self.inner.mount(key, target)
    }

    fn mount_volatile(&self, key: &str, target: &Path) -> std::io::Result<Box<dyn Mounted>> {
        self.inner.mount_volatile(key, target)
    }
}

#[cfg(test)]
mod tests;

//! The image config (`application/vnd.oci.image.config.v1+json`) as img writes and reads it,
//! with Docker's extensions to the OCI fields.
//!
//! This is our own serde type rather than oci-spec's `ImageConfiguration` for two reasons:
//! - oci-spec's `Config` has no `Healthcheck`, `Shell`, `OnBuild` or `ArgsEscaped`, so a
//!   HEALTHCHECK, SHELL or ONBUILD would be silently dropped from every image we write, and from
//!   every image we read and rewrite (Docker and buildah write them all);
//! - it keeps labels in a `HashMap`, so serializing the same config twice can give two digests;
//!   a build must be reproducible, so every map here is a `BTreeMap`.
//!
//! Unknown fields at both levels (Docker's `container_config`, `docker_version`, `Hostname`, ...)
//! are kept in `extra` so that reading and rewriting a config loses nothing.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use oci_spec::image::Digest;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::platform::host_platform;

/// An image config: platform, container defaults, layer diff IDs and history.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// RFC 3339 time the image was created, kept as written (Docker writes nanoseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// GOARCH spelling: `amd64`, `arm64`.
    #[serde(default)]
    pub architecture: String,
    /// GOOS spelling: `linux`.
    #[serde(default)]
    pub os: String,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    #[serde(rename = "os.features", default, skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Always written, as `{}` when empty, like Docker and buildah.
    #[serde(default)]
    pub config: ContainerConfig,
    #[serde(default)]
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// The defaults for containers run from the image: the `config` object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// `"80/tcp": {}` entries.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_default"
    )]
    pub exposed_ports: BTreeMap<String, Empty>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub env: Vec<String>,
    /// `None` is "not set" (inherit); `Some(vec![])` is an explicit empty ENTRYPOINT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_default"
    )]
    pub volumes: BTreeMap<String, Empty>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_default"
    )]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stop_signal: String,
    /// Docker extension: CMD/ENTRYPOINT are already escaped. Only Windows reads it, but BuildKit
    /// writes it for shell-form commands on Linux too, so it must survive a rewrite.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub args_escaped: bool,
    /// Docker extension: HEALTHCHECK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthConfig>,
    /// Docker extension: SHELL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    /// Docker extension: ONBUILD triggers, as written after ONBUILD.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub on_build: Vec<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// The `{}` values of `ExposedPorts` and `Volumes`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// Docker's HEALTHCHECK settings. Durations are nanoseconds, as Go's `time.Duration` marshals;
/// zero means "inherit the default" and is omitted, as Docker does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthConfig {
    /// `["NONE"]`, `["CMD", args...]` or `["CMD-SHELL", command]`.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub test: Vec<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interval: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeout: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_period: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_interval: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: i64,
}

/// The `rootfs` object: the diff IDs (digests of the uncompressed layer tars), bottom first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, deserialize_with = "null_default")]
    pub diff_ids: Vec<Digest>,
}

impl Default for RootFs {
    fn default() -> Self {
        Self {
            kind: "layers".to_string(),
            diff_ids: Vec::new(),
        }
    }
}

/// One `history` entry. Entries with `empty_layer` made no layer (ENV, CMD, ...); the others
/// match the layers in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// Go writes nil slices and maps as `null`; read them as empty.
fn null_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Formats a time as Docker writes `created`: RFC 3339 in UTC with nanoseconds when nonzero.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

impl ImageConfig {
    /// An empty config for the host platform, as `FROM scratch` starts with.
    pub fn for_host() -> Self {
        let (architecture, os, variant) = host_platform();
        Self {
            architecture,
            os,
            variant,
            ..Self::default()
        }
    }

    /// Sets `created` (and nothing else).
    pub fn set_created(&mut self, t: DateTime<Utc>) {
        self.created = Some(format_time(t));
    }

    /// `created` parsed; `None` when absent or not RFC 3339.
    pub fn created_at(&self) -> Option<DateTime<Utc>> {
        let s = self.created.as_deref()?;
        DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// Records a step that made a layer: its diff ID and its history entry.
    pub fn push_layer(&mut self, diff_id: Digest, mut history: History) {
        history.empty_layer = false;
        self.rootfs.diff_ids.push(diff_id);
        self.history.push(history);
    }

    /// Records a step that changed only the config (ENV, CMD, LABEL, ...).
    pub fn push_empty_layer(&mut self, mut history: History) {
        history.empty_layer = true;
        self.history.push(history);
    }

    /// The value of `key` in the environment, as ENV and ARG expansion need.
    pub fn env_var(&self, key: &str) -> Option<&str> {
        self.config
            .env
            .iter()
            .find_map(|kv| match kv.split_once('=') {
                Some((k, v)) if k == key => Some(v),
                None if kv == key => Some(""),
                _ => None,
            })
    }

    /// Sets `key=value`, replacing an earlier value of `key` in place (Docker's ENV semantics:
    /// the variable keeps its position).
    pub fn set_env(&mut self, key: &str, value: &str) {
        let entry = format!("{key}={value}");
        let existing = self
            .config
            .env
            .iter()
            .position(|kv| kv.split_once('=').map_or(kv.as_str(), |(k, _)| k) == key);
        match existing {
            Some(i) => self.config.env[i] = entry,
            None => self.config.env.push(entry),
        }
    }

    /// The config as stored: JSON with every object's keys sorted, so equal configs have equal
    /// digests whatever order the fields were filled in.
    pub fn to_json(&self) -> Vec<u8> {
        canonical_json(self)
    }
}

/// Serializes `value` to compact JSON with sorted object keys. Serializing through `Value` and
/// sorting explicitly keeps the bytes stable even if some dependency turns on serde_json's
/// `preserve_order`, which would otherwise make key order follow insertion order.
pub(crate) fn canonical_json<T: Serialize>(value: &T) -> Vec<u8> {
    let mut v = serde_json::to_value(value).expect("image JSON types serialize without error");
    v.sort_all_objects();
    serde_json::to_vec(&v).expect("a JSON value serializes without error")
}

//! Docker's ARG scoping rules, for the engine to track which build args a stage sees.

use std::collections::{BTreeMap, BTreeSet};

/// Build args that exist without an ARG instruction (they reach RUN's environment, and are left
/// out of the image config and of the unused-arg warning).
pub const PREDEFINED_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// Args that BuildKit sets from the platforms; visible only once declared with ARG, like any
/// other (globally for FROM lines, or inside the stage).
pub const PLATFORM_ARGS: &[&str] = &[
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
    "BUILDVARIANT",
];

/// The ARG values visible at one point of a build.
///
/// Docker's rules: a global ARG (before the first FROM) is visible in FROM lines only; inside a
/// stage an ARG must be declared again, and `ARG NAME` without a default takes the global value.
/// `--build-arg` overrides any default. ENV wins over an ARG of the same name in expansion,
/// which is the engine's to apply (it layers ENV over `stage_env`).
#[derive(Debug, Clone, Default)]
pub struct ArgScope {
    build_args: BTreeMap<String, String>,
    automatic: BTreeMap<String, String>,
    global: BTreeMap<String, String>,
    stage: BTreeMap<String, String>,
    used: BTreeSet<String>,
}

impl ArgScope {
    /// A scope for a build with these `--build-arg`s and platform values (`TARGETOS` → ...).
    pub fn new(build_args: BTreeMap<String, String>, automatic: BTreeMap<String, String>) -> Self {
        Self {
            build_args,
            automatic,
            ..Self::default()
        }
    }

    fn value(
        &mut self,
        name: &str,
        default: Option<String>,
        outer: Option<&String>,
    ) -> Option<String> {
        self.used.insert(name.to_string());
        if let Some(v) = self.build_args.get(name) {
            return Some(v.clone());
        }
        default
            .or_else(|| outer.cloned())
            .or_else(|| self.automatic.get(name).cloned())
    }

    /// `ARG name[=default]` before the first FROM (the default already expanded).
    pub fn declare_global(&mut self, name: &str, default: Option<String>) {
        if let Some(v) = self.value(name, default, None) {
            self.global.insert(name.to_string(), v);
        }
    }

    /// The variables a FROM line sees.
    pub fn global_env(&self) -> &BTreeMap<String, String> {
        &self.global
    }

    /// Starts a stage: only global ARGs stay known, and only for redeclaration.
    pub fn enter_stage(&mut self) {
        self.stage.clear();
    }

    /// `ARG name[=default]` inside a stage.
    pub fn declare(&mut self, name: &str, default: Option<String>) {
        let outer = self.global.get(name).cloned();
        if let Some(v) = self.value(name, default, outer.as_ref()) {
            self.stage.insert(name.to_string(), v);
        } else {
            self.stage.remove(name);
        }
    }

    /// The ARG values the current stage sees (ENV goes over these).
    pub fn stage_env(&self) -> &BTreeMap<String, String> {
        &self.stage
    }

    /// The predefined proxy args given with `--build-arg`: they go into RUN's environment
    /// without being declared.
    pub fn predefined(&self) -> BTreeMap<String, String> {
        self.build_args
            .iter()
            .filter(|(k, _)| PREDEFINED_ARGS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// `--build-arg`s no ARG declared: Docker warns "[Warning] One or more build-args [...] were
    /// not consumed".
    pub fn unused_build_args(&self) -> Vec<String> {
        self.build_args
            .keys()
            .filter(|k| !self.used.contains(*k) && !PREDEFINED_ARGS.contains(&k.as_str()))
            .cloned()
            .collect()
    }
}

//! The build engine: turns a parsed Dockerfile and a context into an image, stage by stage and
//! step by step, on any snapshot backend.
//!
//! A stage's state is an image config plus its layers (`StageState`). Every instruction moves
//! the state forward under a new cache key (`cache::CacheKey::step`); a step whose key has a
//! record is not run. Steps that change files (RUN, COPY, ADD, WORKDIR) run on an active
//! snapshot mounted by the backend, then the snapshot's diff becomes a layer blob (a plain tar,
//! compressed only when pushed: `image::distribute`) and the
//! snapshot is committed under the layer's chain ID, where the next step (or the next build, or
//! `FROM` of the image) finds it without extracting anything.
//!
//! Stages run on their own threads; a stage that needs another (FROM, COPY --from) waits for it,
//! so independent stages build concurrently.

pub mod cache;
mod error;
mod progress;
mod step;
pub mod timing;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use oci_spec::image::{Descriptor, Digest, MediaType};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::context::Context;
use crate::dockerfile::{ArgScope, Dockerfile, ParseError};
use crate::image::{ImageConfig, ImageStore};
use crate::interrupt::{Interrupt, Interrupted};
use crate::runc::Executor;
use cache::{Cache, CacheKey};
pub use error::StepError;
use imgfs::Snapshotter;
pub use progress::Progress;

/// What to build.
pub struct BuildRequest {
    pub dockerfile: Dockerfile,
    /// The files COPY and ADD read; `None` when the Dockerfile came on stdin without a context.
    pub context: Option<Context>,
    pub build_args: BTreeMap<String, String>,
    /// The stage to build (the last one when `None`).
    pub target: Option<String>,
    /// `--label`s, set on the final image over the Dockerfile's LABELs.
    pub labels: BTreeMap<String, String>,
    pub no_cache: bool,
}

/// A built image, stored in the image store but not yet named.
#[derive(Clone, Debug)]
pub struct Built {
    pub config: ImageConfig,
    pub layers: Vec<LayerRecord>,
    /// The image manifest's descriptor (what names point at).
    pub manifest: Descriptor,
    /// The committed snapshot holding the final file tree (`None` for an empty image).
    pub snapshot: Option<String>,
}

#[derive(Debug, Error)]
pub enum BuildError {
    #[error("{0}")]
    Dockerfile(#[from] ParseError),
    /// A step failed; `at` is `Dockerfile:12` and `instruction` the instruction. The cause is
    /// not `source()`: its text is already in this error's, and `{:#}` would print it twice.
    /// (Boxed, as in `Failed`, to keep results small.)
    #[error("{at}: {instruction}: {cause}")]
    Step {
        at: String,
        instruction: String,
        cause: Box<StepError>,
    },
    #[error("stage {0} failed")]
    Dependency(String),
    /// The failure of a stage the build needed, as that stage's thread reported it.
    #[error("{0}")]
    Stage(Arc<BuildError>),
    /// A failure outside any one step: storing the image, applying or unpacking its layers.
    #[error("{0}")]
    Failed(Box<StepError>),
    /// The engine's interrupt was raised: the build stopped before its next step.
    #[error("{0}")]
    Interrupted(Interrupted),
    /// Nobody reads the build's output any more (`Progress::closed`).
    #[error("the build's output is closed")]
    OutputClosed,
}

impl BuildError {
    /// Whether the build stopped because its output was closed, here or in a stage it needed.
    pub fn output_closed(&self) -> bool {
        match self {
            BuildError::OutputClosed => true,
            BuildError::Stage(e) => e.output_closed(),
            _ => false,
        }
    }
}

impl From<StepError> for BuildError {
    fn from(e: StepError) -> BuildError {
        BuildError::Failed(Box::new(e))
    }
}

/// One layer of a stage: the blob, as the manifest lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerRecord {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
}

impl LayerRecord {
    fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            MediaType::from(self.media_type.as_str()),
            self.size,
            self.digest.clone(),
        )
    }
}

/// Where a stage is: its image config (with history and diff IDs) and its layers. This is also
/// what the cache stores for each step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageState {
    pub config: ImageConfig,
    pub layers: Vec<LayerRecord>,
}

impl StageState {
    fn scratch() -> StageState {
        StageState {
            config: ImageConfig::for_host(),
            layers: Vec::new(),
        }
    }

    /// The name of the committed snapshot holding this state's file tree: its chain ID.
    pub fn snapshot_name(&self) -> Option<String> {
        crate::image::chain_id(&self.config.rootfs.diff_ids).map(|d| d.to_string())
    }
}

/// A finished stage, as other stages see it.
#[derive(Clone, Debug)]
struct StageOutcome {
    state: StageState,
    key: CacheKey,
}

/// Stage results as they come in, for stages waiting on others.
#[derive(Default)]
struct Board {
    /// The stages being built; waiting for any other would wait forever.
    scheduled: Vec<usize>,
    done: Mutex<HashMap<usize, Result<StageOutcome, Arc<BuildError>>>>,
    changed: Condvar,
}

impl Board {
    fn publish(&self, stage: usize, outcome: Result<StageOutcome, Arc<BuildError>>) {
        self.done.lock().expect("poisoned").insert(stage, outcome);
        self.changed.notify_all();
    }

    fn wait(&self, stage: usize) -> Result<StageOutcome, Arc<BuildError>> {
        if !self.scheduled.contains(&stage) {
            // Only an ONBUILD trigger can name a stage the graph did not see.
            return Err(Arc::new(
                StepError::Invalid(format!("stage {stage} is not part of this build")).into(),
            ));
        }
        let mut done = self.done.lock().expect("poisoned");
        loop {
            if let Some(r) = done.get(&stage) {
                return r.clone();
            }
            done = self.changed.wait(done).expect("poisoned");
        }
    }
}

/// Fetches images the store lacks (`FROM` or `COPY --from` of an image that is not local).
/// The registry client implements it; a build without one fails on a missing image.
pub trait Puller: Sync {
    /// Pulls `name` into the image store, so that `ImageStore::resolve(name)` finds it.
    fn pull(&self, name: &str) -> Result<(), crate::registry::RegistryError>;
}

/// Builds images. Holds what a build needs and nothing about a particular build.
pub struct Engine<'a> {
    pub backend: &'a dyn Snapshotter,
    pub images: &'a ImageStore,
    pub executor: &'a dyn Executor,
    pub cache: &'a Cache,
    /// A directory for mount points and temporary files, on the state dir's file system.
    pub scratch: PathBuf,
    pub progress: &'a Progress,
    next_key: AtomicU64,
    /// Held while layers are applied, so two stages on one base do not both apply it.
    apply_lock: Mutex<()>,
    pull_lock: Mutex<()>,
    /// Pulls images the store lacks; `None`: a missing image is an error.
    pub puller: Option<&'a dyn Puller>,
    /// Raised, it stops the build before its next step (the executor stops the running one).
    pub interrupt: Interrupt,
}

impl<'a> Engine<'a> {
    pub fn new(
        backend: &'a dyn Snapshotter,
        images: &'a ImageStore,
        executor: &'a dyn Executor,
        cache: &'a Cache,
        scratch: &Path,
        progress: &'a Progress,
    ) -> Engine<'a> {
        Engine {
            backend,
            images,
            executor,
            cache,
            scratch: scratch.to_owned(),
            progress,
            next_key: AtomicU64::new(0),
            apply_lock: Mutex::new(()),
            pull_lock: Mutex::new(()),
            puller: None,
            interrupt: Interrupt::default(),
        }
    }

    /// The stored image `name`, pulled first if the store lacks it and a puller is set.
    fn image(&self, name: &str) -> Result<crate::image::Image, StepError> {
        match self.images.resolve_from(name) {
            Ok(image) => Ok(image),
            Err(crate::image::StoreError::NotFound(_)) if self.puller.is_some() => {
                // One pull at a time: two stages FROM the same image pull it once.
                let _guard = self.pull_lock.lock().expect("poisoned");
                if let Ok(image) = self.images.resolve_from(name) {
                    return Ok(image);
                }
                let puller = self.puller.expect("checked above");
                tracing::info_span!("pull")
                    .in_scope(|| puller.pull(name))
                    .map_err(|source| StepError::Pull {
                        name: name.to_string(),
                        source,
                    })?;
                Ok(self.images.resolve_from(name)?)
            }
            Err(e) => Err(StepError::Image(e)),
        }
    }

    /// A key for a new active snapshot or view, unique in this process and across processes.
    fn temp_key(&self, what: &str) -> String {
        format!(
            "build-{}-{}-{what}",
            std::process::id(),
            self.next_key.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Builds the target stage of `req` and stores the image (config and manifest blobs).
    pub fn build(&self, req: &BuildRequest) -> Result<Built, BuildError> {
        let df = &req.dockerfile;
        if let Some(syntax) = &df.syntax {
            self.progress.note(&format!(
                "ignoring the syntax directive ({syntax}): img has one built-in Dockerfile frontend"
            ));
        }
        let mut args = ArgScope::new(req.build_args.clone(), platform_args());
        let lex = df.lexer();
        for decl in &df.global_args {
            let default = match &decl.default {
                Some(d) => {
                    Some(
                        lex.process_word(d, args.global_env())
                            .map_err(|e| ParseError {
                                file: df.file.clone(),
                                line: decl.line,
                                message: e.to_string(),
                            })?,
                    )
                }
                None => None,
            };
            args.declare_global(&decl.name, default);
        }
        let order = df.needed_stages(req.target.as_deref(), args.global_env())?;
        let target = *order.last().expect("needed_stages returns the target");

        let board = Arc::new(Board {
            scheduled: order.clone(),
            ..Board::default()
        });
        let used_args = Mutex::new(Vec::<ArgScope>::new());
        std::thread::scope(|s| {
            for &index in &order {
                let board = board.clone();
                let args = args.clone();
                let used_args = &used_args;
                s.spawn(move || {
                    let mut runner = step::StageRunner::new(self, req, index, args, &board);
                    let outcome = runner.run().map_err(Arc::new);
                    used_args.lock().expect("poisoned").push(runner.into_args());
                    board.publish(index, outcome);
                });
            }
        });
        let outcome = board
            .wait(target)
            .map_err(|_| BuildError::Dependency(stage_label(df, target)));
        // A failed dependency is reported by its own thread; the target's error is the one the
        // user must see, so prefer the first failure in build order.
        let outcome = match outcome {
            Ok(o) => o,
            Err(_) => {
                for &i in &order {
                    if let Err(e) = board.wait(i) {
                        return Err(BuildError::Stage(e));
                    }
                }
                unreachable!("the target failed, so some stage did");
            }
        };

        let mut unused: Option<Vec<String>> = None;
        for scope in used_args.into_inner().expect("poisoned") {
            let u = scope.unused_build_args();
            unused = Some(match unused {
                None => u,
                Some(prev) => prev.into_iter().filter(|a| u.contains(a)).collect(),
            });
        }
        if let Some(unused) = unused.filter(|u| !u.is_empty()) {
            self.progress.note(&format!(
                "one or more build args were not consumed: {}",
                unused.join(", ")
            ));
        }

        self.check_interrupt()?;
        let mut state = outcome.state;
        for (k, v) in &req.labels {
            state.config.config.labels.insert(k.clone(), v.clone());
        }
        // The image's time is its last step's: a fully cached rebuild gives the same image.
        state.config.created = state
            .config
            .history
            .last()
            .and_then(|h| h.created.clone())
            .or_else(|| state.config.created.clone());
        self.store_image(state)
    }

    /// Fails if the interrupt was raised.
    fn check_interrupt(&self) -> Result<(), BuildError> {
        match self.interrupt.signal() {
            Some(i) => Err(BuildError::Interrupted(i)),
            None => Ok(()),
        }
    }

    /// Writes the config and manifest of `state` to the image store.
    fn store_image(&self, state: StageState) -> Result<Built, BuildError> {
        let other = |e: crate::image::StoreError| BuildError::from(StepError::Image(e));
        let config_bytes = state.config.to_json();
        let config_blob = self
            .images
            .put_blob(&mut &config_bytes[..], None)
            .map_err(other)?;
        let config_desc = config_blob.descriptor(MediaType::ImageConfig);
        let layers = state.layers.iter().map(LayerRecord::descriptor).collect();
        let manifest = crate::image::image_manifest(config_desc, layers);
        let manifest_bytes =
            serde_json::to_vec(&manifest).map_err(|e| BuildError::from(StepError::Json(e)))?;
        let manifest_blob = self
            .images
            .put_blob(&mut &manifest_bytes[..], None)
            .map_err(other)?;
        Ok(Built {
            snapshot: state.snapshot_name(),
            config: state.config,
            layers: state.layers,
            manifest: manifest_blob.descriptor(MediaType::ImageManifest),
        })
    }
}

/// The layers of an image as a stage state.
pub fn image_state(image: &crate::image::Image) -> StageState {
    StageState {
        layers: image
            .manifest
            .layers()
            .iter()
            .map(|l| LayerRecord {
                digest: l.digest().clone(),
                size: l.size(),
                media_type: l.media_type().to_string(),
            })
            .collect(),
        config: image.config.clone(),
    }
}

/// Makes sure `backend` has the committed snapshot of `state`'s file tree, applying the layers
/// it lacks from their blobs, and returns its name (`None` for an empty tree). Snapshots are
/// named by chain ID, so an image whose layers some build already made extracts nothing.
pub fn ensure_snapshot(
    backend: &dyn Snapshotter,
    images: &ImageStore,
    state: &StageState,
) -> Result<Option<String>, StepError> {
    let chain = crate::image::chain_ids(&state.config.rootfs.diff_ids);
    if chain.is_empty() {
        return Ok(None);
    }
    if chain.len() != state.layers.len() {
        return Err(StepError::LayerCount {
            layers: state.layers.len(),
            diff_ids: chain.len(),
        });
    }
    let present = |name: &str| {
        backend
            .stat(name)
            .is_ok_and(|i| i.kind == imgfs::SnapshotKind::Committed)
    };
    let mut first_missing = chain.len();
    while first_missing > 0 && !present(chain[first_missing - 1].as_ref()) {
        first_missing -= 1;
    }
    for i in first_missing..chain.len() {
        let name = chain[i].to_string();
        let parent = (i > 0).then(|| chain[i - 1].to_string());
        let layer = &state.layers[i];
        tracing::debug!(layer = %layer.digest, snapshot = name, "applying a layer");
        let mut blob = images
            .open_blob(&layer.digest)
            .map_err(|source| StepError::Layer {
                digest: layer.digest.to_string(),
                source,
            })?;
        let applied = backend
            .apply(
                &name,
                parent.as_deref(),
                &mut blob,
                &imgfs::layer::ImportLimits::default(),
            )
            .map_err(|source| StepError::Apply {
                digest: layer.digest.to_string(),
                source,
            })?;
        let want = state.config.rootfs.diff_ids[i].to_string();
        if applied.diff_id != want {
            let _ = backend.remove(&name);
            return Err(StepError::DiffId {
                digest: layer.digest.to_string(),
                actual: applied.diff_id,
                expected: want,
            });
        }
    }
    Ok(Some(chain[chain.len() - 1].to_string()))
}

/// `ensure_snapshot` for a stored image.
pub fn ensure_image_snapshot(
    backend: &dyn Snapshotter,
    images: &ImageStore,
    image: &crate::image::Image,
) -> Result<Option<String>, BuildError> {
    ensure_snapshot(backend, images, &image_state(image)).map_err(BuildError::from)
}

/// A container config with `docker import --change` instructions applied.
pub fn config_changes(changes: &[String]) -> Result<crate::image::ContainerConfig, BuildError> {
    let mut config = ImageConfig::for_host();
    let mut cmd_set = false;
    for change in changes {
        let file = Path::new("--change");
        let df = crate::dockerfile::parse(&format!("FROM scratch\n{change}\n"), file)?;
        for ins in &df.stages[0].instructions {
            let env = config.config.env.clone();
            let kind = ins.expand(file, &df.lexer(), &|k: &str| {
                crate::dockerfile::Env::get(env.as_slice(), k)
            })?;
            step::apply_config(&mut config, kind, &mut cmd_set).map_err(|message| {
                StepError::Change {
                    change: change.clone(),
                    message,
                }
            })?;
        }
    }
    Ok(config.config)
}

/// Writes the whole file tree of the snapshot `snapshot` into `dir` (which must be empty), with
/// owners, modes, times, xattrs and hard links.
pub fn unpack_snapshot(
    backend: &dyn Snapshotter,
    snapshot: &str,
    dir: &Path,
) -> Result<(), BuildError> {
    let (reader, mut writer) = std::io::pipe().map_err(StepError::Stream)?;
    std::thread::scope(|s| {
        let export = s.spawn(move || {
            let r = backend.export(snapshot, &mut writer);
            drop(writer);
            r
        });
        let mut reader = std::io::BufReader::with_capacity(1 << 20, reader);
        // Errors and warnings name the destination, which the user knows.
        let shown = dir.display().to_string();
        let unpacked =
            crate::context::unpack_tree(&mut reader, dir, &shown).map_err(std::io::Error::other);
        // Drain what the exporter still writes if unpacking stopped early.
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
        let exported = export.join().expect("the export thread does not panic");
        exported.map_err(|source| StepError::Export {
            snapshot: snapshot.to_string(),
            source,
        })?;
        unpacked.map_err(|source| {
            BuildError::from(StepError::Unpack {
                dir: dir.to_path_buf(),
                source,
            })
        })
    })
}

/// The platform args BuildKit defines (values for the host: img builds for the host only).
fn platform_args() -> BTreeMap<String, String> {
    let (arch, os, variant) = crate::image::host_platform();
    let platform = match &variant {
        Some(v) => format!("{os}/{arch}/{v}"),
        None => format!("{os}/{arch}"),
    };
    let mut m = BTreeMap::new();
    for side in ["TARGET", "BUILD"] {
        m.insert(format!("{side}PLATFORM"), platform.clone());
        m.insert(format!("{side}OS"), os.clone());
        m.insert(format!("{side}ARCH"), arch.clone());
        m.insert(
            format!("{side}VARIANT"),
            variant.clone().unwrap_or_default(),
        );
    }
    m
}

/// How progress lines name a stage: its name, or `stage-N`.
fn stage_label(df: &Dockerfile, index: usize) -> String {
    df.stages[index]
        .name
        .clone()
        .unwrap_or_else(|| format!("stage-{index}"))
}

//! One stage of a build: its base, then each instruction in turn, through the cache.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::image::Digest;

use super::{
    Board, BuildError, BuildRequest, Engine, LayerRecord, StageOutcome, StageState, StepError,
};
use crate::build::cache::CacheKey;
use crate::build::timing::InSpan;
use crate::context::{self, CopyOptions, SourceTree};
use crate::dockerfile::{
    ArgScope, Command, CopyInstruction, Dockerfile, Healthcheck, Instruction, InstructionKind,
    RunInstruction, Source,
};
use crate::image::{Empty, HealthConfig, History, ImageConfig};
use crate::runc::RunRequest;

/// The SHELL of an image that sets none.
const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];

/// The PATH a RUN step gets when the image sets none (what Docker uses).
const DEFAULT_PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The media type of the layers a build writes: uncompressed (`fs_step_on`).
const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

pub(super) struct StageRunner<'e, 'a> {
    engine: &'e Engine<'a>,
    req: &'e BuildRequest,
    df: &'e Dockerfile,
    index: usize,
    args: ArgScope,
    board: &'e Board,
    state: StageState,
    key: CacheKey,
    label: String,
    /// CMD was set in this stage (so ENTRYPOINT does not reset it).
    cmd_set: bool,
    step: usize,
    total: usize,
}

/// Where the files of a COPY come from.
enum SourceRoot {
    Context(PathBuf),
    /// A mounted view of a stage or image; unmounted and removed on drop.
    Snapshot(Box<dyn imgfs::Mounted>, String),
    Empty(tempfile::TempDir),
}

impl<'e, 'a> StageRunner<'e, 'a> {
    pub(super) fn new(
        engine: &'e Engine<'a>,
        req: &'e BuildRequest,
        index: usize,
        args: ArgScope,
        board: &'e Board,
    ) -> StageRunner<'e, 'a> {
        let df = &req.dockerfile;
        StageRunner {
            engine,
            req,
            df,
            index,
            args,
            board,
            state: StageState::scratch(),
            key: CacheKey::base("scratch"),
            label: super::stage_label(df, index),
            cmd_set: false,
            step: 0,
            total: df.stages[index].instructions.len() + 1,
        }
    }

    pub(super) fn into_args(self) -> ArgScope {
        self.args
    }

    fn at(&self, line: usize) -> String {
        format!("{}:{line}", self.df.file.display())
    }

    fn fail(&self, ins: &Instruction, cause: impl Into<StepError>) -> BuildError {
        BuildError::Step {
            at: self.at(ins.line),
            instruction: ins.original.clone(),
            cause: Box::new(cause.into()),
        }
    }

    pub(super) fn run(&mut self) -> Result<StageOutcome, BuildError> {
        let stage = &self.df.stages[self.index];
        self.step = 1;
        let from_step = self.step_span(&stage.original).entered();
        let base = self.df.stage_base(self.index, self.args.global_env())?;
        let from_err = |cause: StepError| BuildError::Step {
            at: format!("{}:{}", self.df.file.display(), stage.line),
            instruction: stage.original.clone(),
            cause: Box::new(cause),
        };
        let base_span = tracing::info_span!("base").entered();
        match base {
            Ok(dep) => {
                let outcome = self
                    .board
                    .wait(dep)
                    .map_err(|_| BuildError::Dependency(super::stage_label(self.df, dep)))?;
                self.state = outcome.state;
                self.key = outcome.key;
            }
            Err(image) if image == "scratch" => {}
            Err(image) => {
                let found = self.engine.image(&image).map_err(|e| {
                    from_err(StepError::BaseImage {
                        image: image.clone(),
                        source: Box::new(e),
                    })
                })?;
                self.state = super::image_state(&found);
                self.key = CacheKey::base(found.manifest_digest.as_ref());
            }
        }
        drop(base_span);
        self.engine
            .progress
            .step(&self.label, 1, self.total, &stage.original, false);
        self.args.enter_stage();
        drop(from_step);

        // ONBUILD triggers of the base run first, and are not inherited.
        let triggers = std::mem::take(&mut self.state.config.config.on_build);
        for trigger in triggers {
            let parsed =
                crate::dockerfile::parse(&format!("FROM scratch\n{trigger}\n"), &self.df.file)
                    .map_err(|e| {
                        from_err(StepError::OnBuild {
                            trigger: trigger.clone(),
                            source: e,
                        })
                    })?;
            for ins in &parsed.stages[0].instructions {
                let mut ins = ins.clone();
                ins.line = stage.line;
                self.dispatch(&ins)?;
            }
        }
        for ins in &stage.instructions {
            self.step += 1;
            self.dispatch(ins)?;
        }
        Ok(StageOutcome {
            state: self.state.clone(),
            key: self.key.clone(),
        })
    }

    /// The environment words are expanded with: ENV over the stage's ARGs.
    fn expansion_env(&self) -> BTreeMap<String, String> {
        let mut env = self.args.stage_env().clone();
        for kv in &self.state.config.config.env {
            match kv.split_once('=') {
                Some((k, v)) => env.insert(k.to_owned(), v.to_owned()),
                None => env.insert(kv.clone(), String::new()),
            };
        }
        env
    }

    fn shell(&self) -> Vec<String> {
        self.state
            .config
            .config
            .shell
            .clone()
            .unwrap_or_else(|| DEFAULT_SHELL.iter().map(|s| s.to_string()).collect())
    }

    fn history(&self, ins: &Instruction) -> History {
        History {
            created: Some(crate::image::format_time(chrono::Utc::now())),
            created_by: Some(ins.original.clone()),
            comment: Some("img".to_owned()),
            ..History::default()
        }
    }

    /// The span of the current step (`timing` sums the time of each phase in it).
    fn step_span(&self, text: &str) -> tracing::Span {
        tracing::info_span!(
            "step",
            stage = %self.label,
            n = self.step,
            of = self.total,
            text,
            cached = tracing::field::Empty,
        )
    }

    fn dispatch(&mut self, ins: &Instruction) -> Result<(), BuildError> {
        let _step = self.step_span(&ins.original).entered();
        self.engine.check_interrupt()?;
        if self.engine.progress.closed() {
            return Err(BuildError::OutputClosed);
        }
        let env = self.expansion_env();
        let lex = self.df.lexer();
        let kind = ins.expand(&self.df.file, &lex, &env)?;
        let text = describe(&kind, ins);
        match kind {
            InstructionKind::Arg(decls) => {
                for d in decls {
                    self.args.declare(&d.name, d.default);
                }
                self.engine
                    .progress
                    .step(&self.label, self.step, self.total, &ins.original, false);
                Ok(())
            }
            InstructionKind::Run(run) => self.run_step(ins, &run),
            InstructionKind::Copy(copy) => self.copy_step(ins, &copy, false),
            InstructionKind::Add(copy) => self.copy_step(ins, &copy, true),
            InstructionKind::Workdir(dir) => self.workdir_step(ins, &dir),
            other => {
                // Set here too, not only in `apply_config`: a cached CMD still counts for a later
                // ENTRYPOINT that is not cached.
                if matches!(other, InstructionKind::Cmd(_)) {
                    self.cmd_set = true;
                }
                let key = self.key.step(&[&text]);
                self.cached_or(ins, key, |me| {
                    let mut state = me.state.clone();
                    apply_config(&mut state.config, other, &mut me.cmd_set)
                        .map_err(|e| me.fail(ins, StepError::Invalid(e)))?;
                    state.config.push_empty_layer(me.history(ins));
                    Ok(state)
                })
            }
        }
    }

    /// Takes the state under `key` from the cache, or computes it with `make` and stores it.
    fn cached_or(
        &mut self,
        ins: &Instruction,
        key: CacheKey,
        make: impl FnOnce(&mut Self) -> Result<StageState, BuildError>,
    ) -> Result<(), BuildError> {
        if let Some(state) = self.cache_hit(&key) {
            tracing::Span::current().record("cached", true);
            self.engine
                .progress
                .step(&self.label, self.step, self.total, &ins.original, true);
            self.state = state;
            self.key = key;
            return Ok(());
        }
        self.engine
            .progress
            .step(&self.label, self.step, self.total, &ins.original, false);
        let state = make(self)?;
        self.engine
            .cache
            .put(&key, &state)
            .map_err(|e| self.fail(ins, StepError::Cache(e)))?;
        self.state = state;
        self.key = key;
        Ok(())
    }

    /// The usable cache record under `key`, unless the build ignores the cache.
    fn cache_hit(&self, key: &CacheKey) -> Option<StageState> {
        if self.req.no_cache {
            return None;
        }
        tracing::info_span!("cache_lookup").in_scope(|| {
            self.engine
                .cache
                .get::<StageState>(key)
                .filter(|state| self.layers_present(state))
        })
    }

    /// A cache record is only usable while the image store still has its layer blobs (`img
    /// prune` may have removed them).
    fn layers_present(&self, state: &StageState) -> bool {
        state
            .layers
            .iter()
            .all(|l| self.engine.images.has_blob(&l.digest).unwrap_or(false))
    }

    fn run_step(&mut self, ins: &Instruction, run: &RunInstruction) -> Result<(), BuildError> {
        if let Some(flag) = run.flags.first() {
            return Err(self.fail(
                ins,
                StepError::Invalid(format!("RUN --{} is not supported by img yet", flag.name)),
            ));
        }
        let cmd = run.command(&self.shell());
        // ARGs reach RUN as environment variables (under ENV of the same name), and the
        // predefined proxy args even undeclared; they are part of the key because they change
        // what the command does.
        let mut arg_env: BTreeMap<String, String> = self.args.predefined();
        arg_env.extend(self.args.stage_env().clone());
        arg_env.retain(|k, _| self.state.config.env_var(k).is_none());
        let files: Vec<(String, Vec<u8>, u32)> = cmd
            .files
            .iter()
            .map(|(p, c, m)| (p.clone(), c.clone().into_bytes(), *m))
            .collect();
        let key = self.key.step(&[
            "RUN",
            &serde_json::to_string(&cmd.argv).unwrap_or_default(),
            &serde_json::to_string(&arg_env).unwrap_or_default(),
            &serde_json::to_string(&cmd.files).unwrap_or_default(),
        ]);
        let argv = cmd.argv.clone();
        self.cached_or(ins, key, |me| {
            let mut env = me.state.config.config.env.clone();
            if !env.iter().any(|e| e.starts_with("PATH=")) {
                env.insert(0, DEFAULT_PATH_ENV.to_owned());
            }
            env.extend(arg_env.iter().map(|(k, v)| format!("{k}={v}")));
            let user_spec = me.state.config.config.user.clone();
            let workdir = me.workdir();
            let history = me.history(ins);
            me.fs_step(ins, history, |me, root| {
                let mut user = context::resolve_user(root, nonempty(&user_spec, "root"))
                    .map_err(|e| me.fail(ins, e))?;
                // The primary group is a supplementary group too, as containerd's
                // ensureAdditionalGids makes it for BuildKit (and buildah does the same).
                if !user.additional_gids.contains(&user.gid) {
                    user.additional_gids.insert(0, user.gid);
                }
                context::mkdir_in_root(root, &workdir, 0, 0).map_err(|e| {
                    me.fail(
                        ins,
                        StepError::CreateDir {
                            what: format!("the working directory {workdir}"),
                            source: e,
                        },
                    )
                })?;
                let req = RunRequest {
                    argv: argv.clone(),
                    env: env.clone(),
                    cwd: workdir.clone(),
                    uid: user.uid,
                    gid: user.gid,
                    additional_gids: user.additional_gids.clone(),
                    hostname: "img".to_owned(),
                    files: files.clone(),
                };
                let mut out = me.engine.progress.output();
                let code = tracing::info_span!("run")
                    .in_scope(|| me.engine.executor.run(root, &req, &mut out))
                    .map_err(|e| me.fail(ins, e))?;
                if code != 0 {
                    return Err(me.fail(
                        ins,
                        StepError::ExitCode {
                            argv: argv.join(" "),
                            code,
                        },
                    ));
                }
                Ok(())
            })
        })
    }

    /// The working directory steps run in.
    fn workdir(&self) -> String {
        nonempty(&self.state.config.config.working_dir, "/").to_owned()
    }

    fn workdir_step(&mut self, ins: &Instruction, dir: &str) -> Result<(), BuildError> {
        let path = clean_abs(&join_in_image(&self.workdir(), dir));
        let user_spec = self.state.config.config.user.clone();
        let key = self.key.step(&["WORKDIR", &path, &user_spec]);
        self.cached_or(ins, key, |me| {
            me.state.config.config.working_dir = path.clone();
            let history = me.history(ins);
            // BuildKit creates the directory owned by the USER in effect.
            me.fs_step(ins, history, |me, root| {
                let (uid, gid) = if user_spec.is_empty() {
                    (0, 0)
                } else {
                    let u = context::resolve_user(root, &user_spec).map_err(|e| me.fail(ins, e))?;
                    (u.uid, u.gid)
                };
                context::mkdir_in_root(root, &path, uid, gid).map_err(|e| {
                    me.fail(
                        ins,
                        StepError::CreateDir {
                            what: path.clone(),
                            source: e,
                        },
                    )
                })
            })
        })
    }

    fn copy_step(
        &mut self,
        ins: &Instruction,
        copy: &CopyInstruction,
        add: bool,
    ) -> Result<(), BuildError> {
        if copy.parents || !copy.exclude.is_empty() {
            return Err(self.fail(
                ins,
                StepError::Invalid(
                    "--parents and --exclude are not supported by img yet".to_string(),
                ),
            ));
        }
        let mut paths = Vec::new();
        let mut heredocs = Vec::new();
        for src in &copy.sources {
            match src {
                Source::Path(p) => {
                    if add {
                        context::check_add_source(p).map_err(|e| self.fail(ins, e))?;
                    }
                    paths.push(p.as_str());
                }
                Source::Heredoc(h) => heredocs.push(h),
            }
        }
        let chmod = copy
            .chmod
            .as_deref()
            .map(context::Chmod::parse)
            .transpose()
            .map_err(|e| self.fail(ins, e))?;
        let mut dest = join_in_image(&self.workdir(), &copy.dest);
        // Several sources always go into a directory.
        if (copy.dest.ends_with('/') || copy.sources.len() > 1) && !dest.ends_with('/') {
            dest.push('/');
        }

        let from = match &copy.from {
            Some(from) => {
                Some(tracing::info_span!("base").in_scope(|| self.copy_source_state(ins, from))?)
            }
            None => None,
        };
        // What a COPY --from reads from a committed snapshot hashes the same every time: its
        // digest is remembered per snapshot, and a rebuild whose record is there needs no mount.
        let sum_key = from
            .as_ref()
            .and_then(StageState::snapshot_name)
            .filter(|_| !paths.is_empty())
            .map(|chain| {
                CacheKey::base("copy-from-sum").step(&[
                    if add { "ADD" } else { "COPY" },
                    &chain,
                    &paths.join("\0"),
                    if copy.sources.len() > 1 {
                        "several"
                    } else {
                        "one"
                    },
                ])
            });
        let parent = self.key.clone();
        let key_of = |digest: &str| {
            let mut digest = digest.to_owned();
            for h in &heredocs {
                digest.push_str(&format!(
                    "|{}:{}",
                    h.name,
                    crate::image::sha256_digest(h.content.as_bytes())
                ));
            }
            parent.step(&[
                if add { "ADD" } else { "COPY" },
                &format!("{:?} {:?} {:?} {dest}", copy.chown, copy.chmod, copy.from),
                &digest,
            ])
        };
        if let Some(sum) = sum_key.as_ref().and_then(|k| self.engine.cache.sum(k)) {
            let key = key_of(&sum);
            if self.cache_hit(&key).is_some() {
                return self.cached_or(ins, key, |_| unreachable!("a cache hit runs nothing"));
            }
        }
        let source =
            tracing::info_span!("base").in_scope(|| self.source_root(ins, from.as_ref()))?;
        let result = (|| {
            let tree = match (&source, &self.req.context) {
                (SourceRoot::Context(_), Some(ctx)) => ctx.source_tree(),
                (SourceRoot::Snapshot(m, _), _) => SourceTree::stage(m.path()),
                (SourceRoot::Empty(t), _) => SourceTree::stage(t.path()),
                (SourceRoot::Context(p), None) => SourceTree::stage(p),
            };
            let resolved = if paths.is_empty() {
                None
            } else {
                let mut r = tree.resolve(&paths).map_err(|e| self.fail(ins, e))?;
                r.dest_is_dir |= copy.sources.len() > 1;
                Some(r)
            };
            let digest = match &resolved {
                Some(r) => context::content_hash(&tree, r).map_err(|e| self.fail(ins, e))?,
                None => String::new(),
            };
            if let Some(k) = &sum_key
                && let Err(e) = self.engine.cache.put_sum(k, &digest)
            {
                tracing::warn!("cannot remember the digest of a COPY --from source: {e}");
            }
            let key = key_of(&digest);
            let chown = copy.chown.clone();
            self.cached_or(ins, key, |me| {
                let history = me.history(ins);
                me.fs_step(ins, history, |me, root| {
                    let _copy = tracing::info_span!("copy").entered();
                    let owner = match &chown {
                        Some(spec) => {
                            Some(context::resolve_chown(root, spec).map_err(|e| me.fail(ins, e))?)
                        }
                        None => None,
                    };
                    let opts = CopyOptions {
                        chown: owner,
                        chmod: chmod.clone(),
                        unpack_archives: add,
                    };
                    if let Some(r) = &resolved {
                        context::copy_into(&tree, r, root, &dest, &opts)
                            .map_err(|e| me.fail(ins, e))?;
                    }
                    for h in &heredocs {
                        context::copy_heredoc(root, &h.name, h.content.as_bytes(), &dest, &opts)
                            .map_err(|e| me.fail(ins, e))?;
                    }
                    Ok(())
                })
            })
        })();
        self.release_source(source);
        result
    }

    /// The state a `COPY --from` reads: a stage's (once it is built) or an image's.
    fn copy_source_state(
        &mut self,
        ins: &Instruction,
        from: &str,
    ) -> Result<StageState, BuildError> {
        match self.df.stage_index(from).filter(|&i| i != self.index) {
            Some(i) => Ok(self
                .board
                .wait(i)
                .map_err(|_| BuildError::Dependency(super::stage_label(self.df, i)))?
                .state),
            None => {
                let image = self.engine.image(from).map_err(|e| {
                    self.fail(
                        ins,
                        StepError::From {
                            from: from.to_owned(),
                            source: Box::new(e),
                        },
                    )
                })?;
                Ok(super::image_state(&image))
            }
        }
    }

    /// The root COPY reads from: the context, or a mounted view of `from`, the state of its
    /// `--from` stage or image.
    fn source_root(
        &mut self,
        ins: &Instruction,
        from: Option<&StageState>,
    ) -> Result<SourceRoot, BuildError> {
        let Some(state) = from else {
            return match &self.req.context {
                Some(ctx) => Ok(SourceRoot::Context(ctx.root().to_owned())),
                None => Err(self.fail(
                    ins,
                    StepError::Invalid(
                        "no build context: the Dockerfile came on standard input without one"
                            .to_string(),
                    ),
                )),
            };
        };
        let Some(snapshot) = self.ensure_snapshot(ins, state)? else {
            let dir = tempfile::tempdir_in(&self.engine.scratch)
                .map_err(|e| self.fail(ins, StepError::io(&self.engine.scratch)(e)))?;
            return Ok(SourceRoot::Empty(dir));
        };
        let key = self.engine.temp_key("from");
        let backend = self.engine.backend;
        backend
            .view(&key, &snapshot)
            .map_err(|e| self.fail(ins, e))?;
        let mnt = self.engine.scratch.join(&key);
        let mounted = std::fs::create_dir_all(&mnt).and_then(|_| backend.mount(&key, &mnt));
        match mounted {
            Ok(m) => Ok(SourceRoot::Snapshot(m, key)),
            Err(e) => {
                let _ = backend.remove(&key);
                Err(self.fail(
                    ins,
                    StepError::Mount {
                        what: snapshot,
                        source: e,
                    },
                ))
            }
        }
    }

    fn release_source(&self, source: SourceRoot) {
        if let SourceRoot::Snapshot(m, key) = source {
            let path = m.path().to_owned();
            if let Err(e) = m.unmount() {
                tracing::warn!("failed to unmount {}: {e}", path.display());
            }
            let _ = std::fs::remove_dir(&path);
            if let Err(e) = self.engine.backend.remove(&key) {
                tracing::warn!("failed to remove the view {key}: {e}");
            }
        }
    }

    fn ensure_snapshot(
        &self,
        ins: &Instruction,
        state: &StageState,
    ) -> Result<Option<String>, BuildError> {
        let _apply = tracing::info_span!("apply").entered();
        // One stage at a time applies layers, so two stages on one base do not both apply it.
        let _guard = self.engine.apply_lock.lock().expect("poisoned");
        super::ensure_snapshot(self.engine.backend, self.engine.images, state)
            .map_err(|e| self.fail(ins, e))
    }

    /// Runs `op` on a new active snapshot of the current state mounted at a fresh directory,
    /// then turns what it changed into a layer (none if nothing changed) and commits it.
    fn fs_step(
        &mut self,
        ins: &Instruction,
        history: History,
        op: impl FnOnce(&Self, &Path) -> Result<(), BuildError>,
    ) -> Result<StageState, BuildError> {
        let parent = self.ensure_snapshot(ins, &self.state.clone())?;
        let backend = self.engine.backend;
        let key = self.engine.temp_key("step");
        backend
            .prepare(&key, parent.as_deref())
            .map_err(|e| self.fail(ins, e))?;
        let result = self.fs_step_on(ins, &key, history, op);
        if result.is_err() {
            let _ = backend.remove(&key);
        }
        result
    }

    fn fs_step_on(
        &self,
        ins: &Instruction,
        key: &str,
        history: History,
        op: impl FnOnce(&Self, &Path) -> Result<(), BuildError>,
    ) -> Result<StageState, BuildError> {
        let backend = self.engine.backend;
        let mnt = self.engine.scratch.join(key);
        std::fs::create_dir_all(&mnt).map_err(|e| self.fail(ins, StepError::io(&mnt)(e)))?;
        // A step's snapshot is removed if the build dies before its commit, and the commit
        // makes it durable whole, so the fsyncs of what runs in it (dpkg's, one per file it
        // unpacks) need not reach the disk.
        let mount = tracing::info_span!("mount").in_scope(|| backend.mount_volatile(key, &mnt));
        let mount = mount.map_err(|e| {
            self.fail(
                ins,
                StepError::Mount {
                    what: "the step's snapshot".to_string(),
                    source: e,
                },
            )
        })?;
        let ran = op(self, &mnt);
        let unmounted = tracing::info_span!("unmount").in_scope(|| mount.unmount());
        let _ = std::fs::remove_dir(&mnt);
        ran?;
        unmounted.map_err(|e| self.fail(ins, StepError::Unmount(e)))?;

        let mut state = self.state.clone();
        // The layer is stored as the tar the diff writes, under the diff ID the diff computes
        // as it writes (the writer does not hash it again); a push compresses
        // it (`image::distribute`), as BuildKit compresses a layer only when it exports it.
        // The blob writer's calls count as `store`, the rest of the diff's as `diff` (`timing`).
        let store = tracing::info_span!("store");
        let writer = self
            .engine
            .images
            .layer_writer()
            .map_err(|e| self.fail(ins, e))?;
        let mut writer = InSpan::new(writer, store.clone());
        let report = tracing::info_span!("diff")
            .in_scope(|| backend.diff(key, &mut writer))
            .map_err(|e| self.fail(ins, StepError::WriteLayer(e)))?;
        if report.entries == 0 {
            // Nothing changed: no layer, as BuildKit does.
            drop(writer);
            backend.remove(key).map_err(|e| self.fail(ins, e))?;
            state.config.push_empty_layer(history);
            return Ok(state);
        }
        let diff_id = Digest::from_str(&report.diff_id).map_err(|e| self.fail(ins, e))?;
        state.config.push_layer(diff_id.clone(), history);
        let name = state
            .snapshot_name()
            .expect("a state with a layer has a chain id");
        // The snapshot's name is its chain ID, known once the diff is hashed. It is committed
        // while the blob is synced and named on another thread: both wait on the disk.
        let (committed, blob) = std::thread::scope(|s| {
            let blob = s.spawn(|| store.in_scope(|| writer.into_inner().commit(Some(&diff_id))));
            let committed = tracing::info_span!("commit").in_scope(|| backend.commit(&name, key));
            (committed, blob.join())
        });
        match committed {
            Ok(_) => {}
            // The same tree was built before (the cache record was pruned, say): keep that one.
            Err(imgfs::Error::Exists(_)) => backend.remove(key).map_err(|e| self.fail(ins, e))?,
            Err(e) => return Err(self.fail(ins, StepError::Commit(e))),
        }
        let blob = blob
            .expect("storing a blob does not panic")
            .map_err(|e| self.fail(ins, e))?;
        state.layers.push(LayerRecord {
            digest: blob.digest,
            size: blob.size,
            media_type: LAYER_MEDIA_TYPE.to_owned(),
        });
        Ok(state)
    }
}

/// Applies an instruction that only changes the image config (not ARG, RUN, COPY, ADD or
/// WORKDIR). `cmd_set` tracks whether this stage set CMD, which ENTRYPOINT must know.
pub(crate) fn apply_config(
    config: &mut ImageConfig,
    kind: InstructionKind,
    cmd_set: &mut bool,
) -> Result<(), String> {
    let shell = config
        .config
        .shell
        .clone()
        .unwrap_or_else(|| DEFAULT_SHELL.iter().map(|s| s.to_string()).collect());
    let form = |cmd: Command| match cmd {
        Command::Exec(argv) => argv,
        Command::Shell(text) => shell.iter().cloned().chain([text]).collect(),
    };
    match kind {
        InstructionKind::Env(kvs) => {
            for kv in kvs {
                config.set_env(&kv.key, &kv.value);
            }
        }
        InstructionKind::Label(kvs) => {
            for kv in kvs {
                config.config.labels.insert(kv.key, kv.value);
            }
        }
        InstructionKind::User(u) => config.config.user = u,
        InstructionKind::Expose(ports) => {
            for p in ports {
                for port in expand_port(&p)? {
                    config.config.exposed_ports.insert(port, Empty {});
                }
            }
        }
        InstructionKind::Volume(vols) => {
            for v in vols {
                config.config.volumes.insert(v, Empty {});
            }
        }
        InstructionKind::Cmd(cmd) => {
            config.config.cmd = Some(form(cmd));
            *cmd_set = true;
        }
        InstructionKind::Entrypoint(cmd) => {
            config.config.entrypoint = Some(form(cmd));
            // Docker: an ENTRYPOINT resets a CMD inherited from the base image.
            if !*cmd_set {
                config.config.cmd = None;
            }
        }
        InstructionKind::Shell(sh) => config.config.shell = Some(sh),
        InstructionKind::Stopsignal(s) => config.config.stop_signal = s,
        InstructionKind::Healthcheck(h) => {
            config.config.healthcheck = Some(match h {
                Healthcheck::None => HealthConfig {
                    test: vec!["NONE".to_owned()],
                    ..HealthConfig::default()
                },
                Healthcheck::Check {
                    test,
                    interval,
                    timeout,
                    start_period,
                    start_interval,
                    retries,
                } => HealthConfig {
                    test,
                    interval: interval.as_nanos() as i64,
                    timeout: timeout.as_nanos() as i64,
                    start_period: start_period.as_nanos() as i64,
                    start_interval: start_interval.as_nanos() as i64,
                    retries: retries as i64,
                },
            });
        }
        InstructionKind::Onbuild { trigger, .. } => config.config.on_build.push(trigger),
        InstructionKind::Maintainer(m) => config.author = Some(m),
        other => return Err(format!("{} cannot be applied to a config", other.keyword())),
    }
    Ok(())
}

fn nonempty<'s>(s: &'s str, default: &'s str) -> &'s str {
    if s.is_empty() { default } else { s }
}

/// What an instruction contributes to its cache key: its expanded form.
fn describe(kind: &InstructionKind, ins: &Instruction) -> String {
    format!("{}\u{0}{:?}", ins.kind.keyword(), kind)
}

/// `path` relative to the working directory `wd`, as Docker resolves WORKDIR and COPY dests.
fn join_in_image(wd: &str, path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("{}/{path}", wd.trim_end_matches('/'))
    }
}

/// A clean absolute path: no `.`, `..` or repeated slashes, no trailing slash.
fn clean_abs(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

/// EXPOSE's port word as Docker stores it: `80` -> `80/tcp`, ranges expanded.
fn expand_port(word: &str) -> Result<Vec<String>, String> {
    let (ports, proto) = match word.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (word, "tcp".to_owned()),
    };
    let bad = || format!("invalid port {word:?}");
    let (lo, hi) = match ports.split_once('-') {
        Some((a, b)) => (
            a.parse::<u16>().map_err(|_| bad())?,
            b.parse::<u16>().map_err(|_| bad())?,
        ),
        None => {
            let p = ports.parse::<u16>().map_err(|_| bad())?;
            (p, p)
        }
    };
    if hi < lo {
        return Err(bad());
    }
    Ok((lo..=hi).map(|p| format!("{p}/{proto}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_against_the_working_directory() {
        assert_eq!(join_in_image("/app", "src"), "/app/src");
        assert_eq!(join_in_image("/", "src"), "/src");
        assert_eq!(join_in_image("/app", "/abs"), "/abs");
        assert_eq!(clean_abs("/a/./b/../c//d/"), "/a/c/d");
        assert_eq!(clean_abs("/../x"), "/x");
    }

    #[test]
    fn exposed_ports_default_to_tcp_and_ranges_expand() {
        assert_eq!(expand_port("80").unwrap(), ["80/tcp"]);
        assert_eq!(expand_port("53/UDP").unwrap(), ["53/udp"]);
        assert_eq!(
            expand_port("8000-8002/tcp").unwrap(),
            ["8000/tcp", "8001/tcp", "8002/tcp"]
        );
        assert!(expand_port("http").is_err());
    }
}

//! `img build`: used like `docker build`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use builder::build::timing::Breakdown;
use builder::build::{BuildRequest, Engine, Progress};
use builder::context::Context;
use builder::dockerfile;
use builder::dockerignore::Matcher;
use builder::image::{self, Reference};
use builder::interrupt::Interrupt;
use builder::state::{BackendKind, State};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub limits: builder::limits::LimitArgs,
    /// Name and optionally a tag (NAME[:TAG]); may be given several times.
    #[arg(short = 't', long = "tag")]
    tags: Vec<String>,
    /// The Dockerfile (default: PATH/Dockerfile), or - for standard input.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Set a build-time variable (KEY=VALUE, or KEY to take it from the environment).
    #[arg(long = "build-arg")]
    build_args: Vec<String>,
    /// Build this stage and the stages it needs (default: the last stage).
    #[arg(long)]
    target: Option<String>,
    /// Where steps run: imgfs over FUSE, or kernel overlayfs.
    #[arg(long, default_value = "fuse", env = "IMG_BACKEND")]
    backend: BackendKind,
    /// Run every step, ignoring the build cache.
    #[arg(long)]
    no_cache: bool,
    /// Set a label on the image (KEY=VALUE).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Also write the result: type=oci|docker|tar|local,dest=PATH (dest=- for stdout).
    #[arg(short = 'o', long = "output")]
    outputs: Vec<String>,
    /// How to show the build, on standard error (buildx's values; rawjson is not supported).
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    progress: ProgressMode,
    /// Print nothing but the image ID, on standard output, once the build succeeds.
    #[arg(short = 'q', long, conflicts_with = "progress")]
    quiet: bool,
    #[command(flatten)]
    registry: super::registry::RegistryFlags,
    /// The build context directory, or - to read a Dockerfile or a context tar from standard
    /// input.
    path: String,
}

/// `--progress`. img has no interactive display, so `auto` and `tty` print what `plain` prints
/// without its table: the table is for finding where time goes, and the default output stays
/// that of `docker build`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// The same as tty
    Auto,
    /// Each step, RUN's output, then a table of where the time went per step (base image,
    /// run or copy, diff, compress, store, commit) and in all
    Plain,
    /// Each step and RUN's output (the same on a terminal or not)
    Tty,
    /// Nothing but errors
    Quiet,
    /// BuildKit's JSON events: img refuses it
    #[value(hide = true)]
    Rawjson,
}

impl Args {
    /// Refuses what cannot be done, before img waits for the state lock or starts anything.
    pub fn check(&self) -> Result<()> {
        if self.progress == ProgressMode::Rawjson {
            bail!(
                "--progress=rawjson is not supported: img has no BuildKit solver events to \
                 print (use plain, tty, auto or quiet)"
            );
        }
        if self.quiet
            && let Some(o) = self
                .outputs
                .iter()
                .find(|o| parse_output(o).is_ok_and(|o| o.to_stdout()))
        {
            bail!("-q prints the image ID on standard output, where -o {o} writes too");
        }
        Ok(())
    }

    /// Whether the build ends with the table of its times (`builder::build::timing`).
    pub fn time_breakdown(&self) -> bool {
        self.progress == ProgressMode::Plain
    }

    fn silent(&self) -> bool {
        self.quiet || self.progress == ProgressMode::Quiet
    }
}

/// What `-o` asks for.
#[derive(Debug, PartialEq, Eq)]
enum Output {
    Oci(PathBuf),
    Docker(PathBuf),
    Tar(PathBuf),
    Local(PathBuf),
}

impl Output {
    fn to_stdout(&self) -> bool {
        let (Output::Oci(dest) | Output::Docker(dest) | Output::Tar(dest) | Output::Local(dest)) =
            self;
        dest.as_os_str() == "-"
    }
}

fn parse_output(spec: &str) -> Result<Output> {
    let mut kind = None;
    let mut dest = None;
    for part in spec.split(',') {
        match part.split_once('=') {
            Some(("type", v)) => kind = Some(v.to_owned()),
            Some(("dest", v)) => dest = Some(PathBuf::from(v)),
            // `-o DIR` alone is a local export, as in docker build.
            None if !spec.contains('=') => {
                return Ok(Output::Local(PathBuf::from(spec)));
            }
            _ => bail!("unknown output option {part:?} in {spec:?}"),
        }
    }
    let dest = dest.with_context(|| format!("output {spec:?} needs dest=PATH"))?;
    Ok(match kind.as_deref() {
        Some("oci") => Output::Oci(dest),
        Some("docker") => Output::Docker(dest),
        Some("tar") => Output::Tar(dest),
        Some("local") => Output::Local(dest),
        Some(other) => bail!("unknown output type {other:?} (oci, docker, tar or local)"),
        None => bail!("output {spec:?} needs type=oci|docker|tar|local"),
    })
}

fn key_values(items: &[String], what: &str, from_env: bool) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for item in items {
        match item.split_once('=') {
            Some((k, v)) => {
                out.insert(k.to_owned(), v.to_owned());
            }
            // `--build-arg KEY` takes KEY from the environment, or is left out if unset.
            None if from_env => {
                if let Ok(v) = std::env::var(item) {
                    out.insert(item.clone(), v);
                }
            }
            None => bail!("{what} {item:?} is not KEY=VALUE"),
        }
    }
    Ok(out)
}

/// Standard input for `img build -`: a context tar (plain or gzip) or a Dockerfile.
fn stdin_is_archive(head: &[u8]) -> bool {
    head.starts_with(&[0x1f, 0x8b]) || (head.len() >= 262 && &head[257..262] == b"ustar")
}

/// SIGINT, SIGTERM and SIGHUP during a build: the first raises the build's interrupt, and the
/// build stops its container, unmounts, drops its snapshots and fails with `Interrupted`, which
/// `main` turns into exit status 128 + the signal. Before the build has started (waiting for
/// the state lock, say) there is nothing to clean up, and the signal ends img at once, as does
/// a second signal or a build still running `FORCE_AFTER` after the first (a pull does not look
/// at the flag): the next img removes what that leaves (`builder::leftovers`).
pub struct Signals {
    interrupt: Interrupt,
    started: Arc<AtomicBool>,
}

/// How long an interrupted build may take to stop before img exits without it.
const FORCE_AFTER: Duration = Duration::from_secs(30);

/// A signal this soon after the first is taken for the same one.
const REPEAT: Duration = Duration::from_secs(1);

impl Signals {
    /// Blocks the signals in this thread, and so in every thread started after, and starts the
    /// one thread that waits for them.
    pub fn block() -> Result<Signals> {
        let mut set = SigSet::empty();
        for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
            set.add(s);
        }
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None).context("cannot block signals")?;
        let signals = Signals {
            interrupt: Interrupt::default(),
            started: Arc::new(AtomicBool::new(false)),
        };
        let (interrupt, started) = (signals.interrupt.clone(), signals.started.clone());
        std::thread::Builder::new()
            .name("signals".to_owned())
            .spawn(move || {
                let Ok(first) = set.wait() else { return };
                if started.load(Ordering::SeqCst) {
                    eprintln!("img: {first}: stopping the build");
                    interrupt.raise(first as i32);
                    let at = std::time::Instant::now();
                    loop {
                        let left = FORCE_AFTER.saturating_sub(at.elapsed());
                        match wait_timeout(&set, left) {
                            // One Ctrl-C can come twice: from the terminal, and passed on by
                            // the img outside an ordinary user's namespace.
                            Some(_) if at.elapsed() < REPEAT => continue,
                            Some(second) => {
                                eprintln!("img: {second}: exiting without cleaning up");
                            }
                            None => {
                                eprintln!(
                                    "img: the build did not stop; exiting without cleaning up"
                                );
                            }
                        }
                        break;
                    }
                }
                std::process::exit(128 + first as i32);
            })
            .context("cannot start the thread that handles signals")?;
        Ok(signals)
    }
}

/// The next of the signals in `set` within `timeout`, if one comes.
fn wait_timeout(set: &SigSet, timeout: Duration) -> Option<Signal> {
    let end = std::time::Instant::now() + timeout;
    loop {
        let left = end.checked_duration_since(std::time::Instant::now())?;
        let ts = libc::timespec {
            tv_sec: left.as_secs() as libc::time_t,
            tv_nsec: left.subsec_nanos() as libc::c_long,
        };
        // SAFETY: both pointers are to live values of the types sigtimedwait takes.
        let n = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
        if n > 0 {
            return Signal::try_from(n).ok();
        }
        // EINTR: wait for the rest; EAGAIN: the time is up (caught by the check above).
    }
}

/// Builds; with `breakdown` (`--progress=plain`) the output ends with where the time went,
/// whether the build succeeded or not.
pub fn build(
    state: &State,
    args: Args,
    signals: Signals,
    breakdown: Option<&Breakdown>,
) -> Result<()> {
    let built = build_and_report(state, args, signals);
    if let Some(b) = breakdown.filter(|b| !b.is_empty()) {
        // What a closed standard error loses here is only this table.
        let _ = io::stderr().lock().write_all(b.table().as_bytes());
    }
    built
}

fn build_and_report(state: &State, args: Args, signals: Signals) -> Result<()> {
    let silent = args.silent();
    let outputs: Vec<Output> = args
        .outputs
        .iter()
        .map(|o| parse_output(o))
        .collect::<Result<_>>()?;
    let tags: Vec<Reference> = args
        .tags
        .iter()
        .map(|t| Reference::parse(t).with_context(|| format!("invalid tag {t:?}")))
        .collect::<Result<_>>()?;

    // Where the Dockerfile and the context come from.
    let (text, file_name, context) = if args.path == "-" {
        let mut stdin = BufReader::with_capacity(1 << 20, io::stdin().lock());
        let head = stdin.fill_buf()?.to_vec();
        if stdin_is_archive(&head) {
            let name = args
                .file
                .as_ref()
                .map(|f| f.display().to_string())
                .unwrap_or_else(|| "Dockerfile".to_owned());
            let ctx = Context::from_tar(stdin, &name)?;
            let path = ctx.root().join(&name);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("the context has no {name}"))?;
            (text, PathBuf::from(name), Some(ctx))
        } else {
            let mut text = String::new();
            stdin.read_to_string(&mut text)?;
            (text, PathBuf::from("Dockerfile"), None)
        }
    } else {
        let dir = PathBuf::from(&args.path);
        if !dir.is_dir() {
            bail!("the build context {} is not a directory", dir.display());
        }
        let (text, file) = match &args.file {
            Some(f) if f.as_os_str() == "-" => {
                let mut text = String::new();
                io::stdin().read_to_string(&mut text)?;
                (text, PathBuf::from("Dockerfile"))
            }
            Some(f) => (read_dockerfile(f)?, f.clone()),
            None => {
                let f = dir.join("Dockerfile");
                (read_dockerfile(&f)?, f)
            }
        };
        let matcher = Matcher::for_dockerfile(&dir, &file)?;
        let ctx = Context::from_dir(&dir, &matcher)?;
        (text, file, Some(ctx))
    };
    let display_name = file_name
        .file_name()
        .map(PathBuf::from)
        .unwrap_or_else(|| file_name.clone());
    let dockerfile = dockerfile::parse(&text, &display_name)?;

    let req = BuildRequest {
        dockerfile,
        context,
        build_args: key_values(&args.build_args, "--build-arg", true)?,
        target: args.target,
        labels: key_values(&args.labels, "--label", false)?,
        no_cache: args.no_cache,
    };

    let progress = if silent {
        Progress::to(Box::new(io::sink()))
    } else {
        Progress::stderr()
    };
    let progress = progress.interrupting(signals.interrupt.clone());
    let _owner = builder::leftovers::Owner::register(state, args.backend)
        .with_context(|| format!("failed to record this build in {}", state.dir().display()))?;
    signals.started.store(true, Ordering::SeqCst);
    let interrupt = signals.interrupt.clone();
    let executor = state.executor()?.interruptible(interrupt.clone());
    let cache = &state.cache;
    let scratch = state.scratch();
    // A store can be open once per process: the build and its outputs share the backend,
    // which is opened only if a step or an output needs it.
    let backend = state.lazy_backend(args.backend);
    let mut engine = Engine::new(
        &backend,
        &state.images,
        &executor,
        cache,
        &scratch,
        &progress,
    );
    let puller = super::registry::BuildPuller::new(&state.images, &args.registry, silent)?;
    engine.puller = Some(&puller);
    engine.interrupt = interrupt.clone();
    let built = engine.build(&req);
    // However the build ended (a step that exits on the signal, a stage that failed on it), an
    // interrupted build is reported as such, and tags nothing.
    if let Some(interrupted) = interrupt.signal() {
        if let Err(e) = built {
            tracing::debug!("the interrupted build ended with: {e}");
        }
        return Err(interrupted.into());
    }
    let built = built?;
    let id = image::sha256_digest(&built.config.to_json());

    for tag in &tags {
        state.images.tag(tag, &built.manifest)?;
    }
    // Outputs that name the image need a name in the store; an untagged build gets a
    // temporary one.
    for out in &outputs {
        match out {
            Output::Oci(dest) | Output::Docker(dest) => {
                let format = if matches!(out, Output::Oci(_)) {
                    image::ArchiveFormat::Oci
                } else {
                    image::ArchiveFormat::Docker
                };
                let name = match tags.first() {
                    Some(t) => t.to_string(),
                    None => built.manifest.digest().to_string(),
                };
                write_to(dest, |w| {
                    image::save(&state.images, &[name.as_str()], format, w)?;
                    Ok(())
                })?;
            }
            Output::Tar(dest) | Output::Local(dest) => {
                write_tree(state, &backend, &built, out, dest)?;
            }
        }
    }
    if args.quiet {
        let mut out = io::stdout().lock();
        writeln!(out, "{id}")?;
        return Ok(out.flush()?);
    }
    if silent {
        return Ok(());
    }
    // A closed standard error fails here (EPIPE), and img exits as SIGPIPE would have it.
    let mut err = io::stderr().lock();
    writeln!(err, "Successfully built {id}")?;
    for tag in &tags {
        writeln!(err, "Successfully tagged {}", tag.familiar())?;
    }
    Ok(())
}

fn read_dockerfile(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("failed to open {}", path.display()))?;
    let mut text = String::new();
    f.read_to_string(&mut text)
        .with_context(|| format!("failed to read {}", path.display()))?;
    Ok(text)
}

fn write_to(dest: &Path, f: impl FnOnce(&mut dyn io::Write) -> Result<()>) -> Result<()> {
    if dest.as_os_str() == "-" {
        let mut out = io::BufWriter::new(io::stdout().lock());
        f(&mut out)?;
        io::Write::flush(&mut out)?;
        return Ok(());
    }
    super::images::write_atomically(dest, f)
}

/// `-o type=tar` and `type=local`: the final file tree, flattened.
fn write_tree(
    state: &State,
    backend: &dyn imgfs::Snapshotter,
    built: &builder::build::Built,
    out: &Output,
    dest: &Path,
) -> Result<()> {
    let state_of = builder::build::StageState {
        config: built.config.clone(),
        layers: built.layers.clone(),
    };
    let snapshot = builder::build::ensure_snapshot(backend, &state.images, &state_of)
        .map_err(anyhow::Error::msg)?;
    match out {
        Output::Local(dir) => {
            std::fs::create_dir_all(dir)?;
            if let Some(s) = snapshot {
                builder::build::unpack_snapshot(backend, &s, dir)?;
            }
            Ok(())
        }
        _ => write_to(dest, |w| {
            match snapshot {
                Some(s) => {
                    backend.export(&s, w)?;
                }
                None => {
                    tar::Builder::new(w).finish()?;
                }
            }
            Ok(())
        }),
    }
}

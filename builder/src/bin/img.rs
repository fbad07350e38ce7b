//! The `img` command line: build images from Dockerfiles and manage them, without a daemon.
//! `main` only maps the result to an exit code; each command lives in a module below.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use builder::build::timing::Breakdown;
use builder::state::{self, State};
use clap::{Parser, Subcommand};
use tracing_subscriber::layer::{Layer as _, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;

#[path = "img/build.rs"]
mod build;
#[path = "img/images.rs"]
mod images;
#[path = "img/mount.rs"]
mod mount;
#[path = "img/registry.rs"]
mod registry;

#[derive(Parser)]
#[command(
    name = "img",
    about = "Build and manage container images without a daemon",
    version
)]
struct Cli {
    /// Where img keeps images, layers and the build cache
    /// [default: /var/lib/img for root, else $XDG_DATA_HOME/img or ~/.local/share/img].
    #[arg(short = 's', long = "state", global = true, env = "IMG_STATE")]
    state: Option<PathBuf>,
    /// Print debug logs.
    #[arg(short = 'd', long, global = true)]
    debug: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build an image from a Dockerfile.
    Build(build::Args),
    /// List images.
    #[command(alias = "list", alias = "images")]
    Ls,
    /// Show disk usage: images' layers, snapshots and the build cache.
    Du,
    /// Remove images by name.
    #[command(alias = "rmi")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Give an image another name.
    Tag { source: String, target: String },
    /// Print images' configs and manifests as JSON.
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Write images to an archive (docker-archive or OCI archive).
    Save(images::SaveArgs),
    /// Load images from a docker-archive or OCI archive.
    Load {
        /// Archive to read (default: standard input).
        #[arg(short = 'i', long)]
        input: Option<PathBuf>,
        /// The snapshot backend the images are unpacked into, for the builds and mounts that
        /// use them.
        #[arg(long, default_value = "fuse", env = "IMG_BACKEND")]
        backend: builder::state::BackendKind,
        #[command(flatten)]
        limits: builder::limits::LimitArgs,
    },
    /// Create an image from a root file system tar (like `docker import`).
    Import(images::ImportArgs),
    /// Extract an image's file tree into a directory.
    Unpack {
        name: String,
        dir: PathBuf,
        #[command(flatten)]
        limits: builder::limits::LimitArgs,
    },
    /// Mount an image's file tree on a directory, read-only unless --writable, until
    /// `img umount`.
    Mount(mount::MountArgs),
    /// Unmount what `img mount` mounted.
    Umount { dir: PathBuf },
    /// Free what `img du` reports as reclaimable.
    Prune,
    /// Pull an image from a registry.
    Pull(registry::PullArgs),
    /// Push an image to a registry.
    Push(registry::PushArgs),
    /// Log in to a registry (stores the credentials in Docker's config.json).
    Login(registry::LoginArgs),
    /// Remove the stored credentials of a registry.
    Logout(registry::LogoutArgs),
    /// Check what builds as an ordinary user need, and print how to fix what is missing.
    Doctor,
    /// Print the version of img and of imgfs.
    Version,
}

impl Command {
    /// The layer limit options of the commands that apply layers.
    fn limit_args(&self) -> Option<&builder::limits::LimitArgs> {
        match self {
            Command::Build(args) => Some(&args.limits),
            Command::Pull(args) => Some(&args.limits),
            Command::Import(args) => Some(&args.limits),
            Command::Load { limits, .. } | Command::Unpack { limits, .. } => Some(limits),
            _ => None,
        }
    }
}

fn main() -> ExitCode {
    if let Err(e) = builder::userns::enter() {
        eprintln!("error: failed to enter img's user namespace: {e}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    // rustls-platform-verifier logs an untrusted certificate at ERROR on every handshake; the
    // registry client reports it once as the command's error, naming the host.
    let filter = if cli.debug {
        "debug"
    } else {
        "warn,rustls_platform_verifier=off"
    };
    // The log's filter is the fmt layer's own, so that the timing layer of `--progress=plain`
    // sees the build's spans whatever the log shows.
    let breakdown = match &cli.command {
        Command::Build(args) if args.time_breakdown() => Some(Breakdown::new()),
        _ => None,
    };
    let log = tracing_subscriber::fmt::layer()
        .with_writer(imgfs::logging::stderr)
        .with_filter(
            tracing_subscriber::EnvFilter::try_from_env("IMG_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        );
    tracing_subscriber::registry()
        .with(log)
        .with(breakdown.as_ref().map(Breakdown::layer))
        .init();
    imgfs::chunks::raise_open_file_limit();
    // `println!` panics when standard output is a closed pipe; that panic unwinds (so what the
    // command holds is dropped and cleaned up) to here, quietly.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !printing_to_closed_pipe(info.payload()) {
            hook(info);
        }
    }));
    match std::panic::catch_unwind(move || run(cli, breakdown.as_ref())) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) if output_closed(&e) => ExitCode::from(SIGPIPE_STATUS),
        Ok(Err(e)) => {
            eprintln!("error: {e:#}");
            match e.downcast_ref::<builder::interrupt::Interrupted>() {
                Some(i) => ExitCode::from(i.exit_code()),
                None => ExitCode::FAILURE,
            }
        }
        Err(p) if printing_to_closed_pipe(p.as_ref()) => ExitCode::from(SIGPIPE_STATUS),
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// Whether a panic is `print!`'s on a closed pipe ("failed printing to stdout: Broken pipe").
fn printing_to_closed_pipe(payload: &(dyn std::any::Any + Send)) -> bool {
    let text = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("");
    text.starts_with("failed printing to std") && text.contains("Broken pipe")
}

/// The shell's status of a process killed by SIGPIPE, which img exits with (quietly, having
/// cleaned up) when its standard output or error turns out to be a pipe nobody reads any more.
/// img ignores SIGPIPE, as every Rust program does, so that a closed pipe never kills a thread
/// serving a mount.
const SIGPIPE_STATUS: u8 = 128 + 13;

/// Whether `e` comes from writing to a closed pipe (EPIPE).
fn output_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<builder::build::BuildError>()
                .is_some_and(builder::build::BuildError::output_closed)
            // A closed output raises the build's interrupt as SIGPIPE (`Progress`).
            || c.downcast_ref::<builder::interrupt::Interrupted>()
                .is_some_and(|i| i.0 == nix::sys::signal::Signal::SIGPIPE as i32)
            // serde_json's source() skips its own io::Error.
            || c.downcast_ref::<serde_json::Error>()
                .is_some_and(|e| e.io_error_kind() == Some(std::io::ErrorKind::BrokenPipe))
    })
}

fn open_state(dir: Option<PathBuf>) -> Result<State> {
    let dir = dir.unwrap_or_else(state::default_dir);
    let state = State::open(&dir, |c| eprintln!("{}", c.waiting_message()))?;
    for removed in builder::leftovers::remove(&state) {
        eprintln!("img: {removed}");
    }
    Ok(state)
}

fn run(cli: Cli, breakdown: Option<&Breakdown>) -> Result<()> {
    // These need no state dir (and must not wait for its lock).
    let command = match cli.command {
        Command::Version => {
            println!("{}", builder::version_string());
            return Ok(());
        }
        Command::Login(args) => return registry::login(args),
        Command::Logout(args) => return registry::logout(args),
        Command::Doctor => return doctor(cli.state),
        Command::Build(args) => {
            args.check()?;
            Command::Build(args)
        }
        other => other,
    };
    // An ordinary user's img runs as root of its own user namespace (see builder::userns).
    if !nix::unistd::Uid::effective().is_root() && !builder::userns::inside() {
        let dir = std::path::absolute(cli.state.unwrap_or_else(state::default_dir))?;
        let status = builder::userns::reexec(&[("IMG_STATE", dir.into_os_string())])?;
        std::process::exit(status.code().unwrap_or(1));
    }
    // The serving process it starts takes the state lock, so this one must not hold it.
    let command = match command {
        Command::Mount(args) if !args.is_serve() => {
            let dir = std::path::absolute(cli.state.unwrap_or_else(state::default_dir))?;
            return mount::mount(&dir, args);
        }
        other => other,
    };
    // Before anything starts a thread (opening a store does), which would inherit no mask.
    let signals = match &command {
        Command::Build(_) => Some(build::Signals::block()?),
        _ => None,
    };
    let mut state = open_state(cli.state)?;
    if let Some(limits) = command.limit_args() {
        state.limits = limits.over(state.limits);
    }
    match command {
        Command::Build(args) => {
            build::build(&state, args, signals.expect("blocked above"), breakdown)
        }
        Command::Ls => images::ls(&state),
        Command::Du => images::du(&state),
        Command::Rm { names } => images::rm(&state, &names),
        Command::Tag { source, target } => images::tag(&state, &source, &target),
        Command::Inspect { names } => images::inspect(&state, &names),
        Command::Save(args) => images::save(&state, args),
        Command::Load { input, backend, .. } => images::load(&state, input, backend),
        Command::Import(args) => images::import(&state, args),
        Command::Unpack { name, dir, .. } => images::unpack(&state, &name, &dir),
        Command::Prune => images::prune(&state),
        Command::Mount(args) => mount::serve(state, args),
        Command::Umount { dir } => mount::umount(&state, &dir),
        Command::Pull(args) => registry::pull(&state, args),
        Command::Push(args) => registry::push(&state, args),
        Command::Version | Command::Login(_) | Command::Logout(_) | Command::Doctor => {
            unreachable!("handled above")
        }
    }
}

fn doctor(state: Option<PathBuf>) -> Result<()> {
    let state = std::path::absolute(state.unwrap_or_else(state::default_dir))?;
    let host = builder::doctor::Host::real(&state);
    let checks = builder::doctor::checks(&host);
    let mut missing = 0;
    for c in &checks {
        match &c.problem {
            None => println!("ok       {}", c.what),
            Some(p) => {
                missing += 1;
                println!("MISSING  {}: {}", c.what, p.detail);
                println!("         fix: {}", p.fix);
            }
        }
    }
    if missing > 0 {
        anyhow::bail!("{missing} of {} checks failed", checks.len());
    }
    Ok(())
}

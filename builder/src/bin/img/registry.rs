//! `img pull`, `img push`, `img login`, `img logout`, and the puller `img build` uses for `FROM`
//! of an image that is not local.

use std::io::{self, BufRead, IsTerminal, Write};

use anyhow::{Context, Result, bail};
use builder::build::Puller;
use builder::image::{ImageStore, Platform};
use builder::registry::{self, Options, Registry, Reporter};
use builder::state::{BackendKind, State};

/// Flags every registry command takes.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RegistryFlags {
    /// Talk plain HTTP to this registry (HOST or HOST:PORT); may be given several times.
    /// Loopback registries always get plain HTTP.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registries: Vec<String>,
}

impl RegistryFlags {
    fn options(&self, platform: Option<&str>) -> Result<Options> {
        Ok(Options {
            insecure_registries: self.insecure_registries.clone(),
            platform: platform.map(str::parse::<Platform>).transpose()?,
            ..Options::default()
        })
    }
}

#[derive(clap::Args)]
pub struct PullArgs {
    /// NAME[:TAG|@DIGEST]
    name: String,
    /// The platform to pick from a multi-platform image (OS/ARCH[/VARIANT]).
    #[arg(long)]
    platform: Option<String>,
    /// The snapshot backend the image is unpacked into, for the builds and mounts that use it.
    #[arg(long, default_value = "fuse", env = "IMG_BACKEND")]
    backend: BackendKind,
    #[command(flatten)]
    flags: RegistryFlags,
    #[command(flatten)]
    pub limits: builder::limits::LimitArgs,
}

#[derive(clap::Args)]
pub struct PushArgs {
    /// NAME[:TAG] of a local image.
    name: String,
    /// Push under this name instead (NAME[:TAG]).
    target: Option<String>,
    #[command(flatten)]
    flags: RegistryFlags,
}

#[derive(clap::Args)]
pub struct LoginArgs {
    /// The registry host (HOST[:PORT]); default: Docker Hub.
    registry: Option<String>,
    #[arg(short = 'u', long)]
    username: Option<String>,
    /// Read the password from standard input.
    #[arg(long)]
    password_stdin: bool,
    #[command(flatten)]
    flags: RegistryFlags,
}

#[derive(clap::Args)]
pub struct LogoutArgs {
    /// The registry host (HOST[:PORT]); default: Docker Hub.
    registry: Option<String>,
}

pub fn pull(state: &State, args: PullArgs) -> Result<()> {
    let registry = Registry::new(
        args.flags.options(args.platform.as_deref())?,
        Reporter::for_stderr(),
    )?;
    // Two slow starts overlap: compiling the reference grammar's regex and loading the TLS roots
    // (~80 ms of CPU) on one thread, creating or opening the snapshot store (fsyncs) on this one.
    let (connected, backend) = std::thread::scope(|s| {
        let connect = s.spawn(|| registry.connect(&args.name));
        let backend = state.backend(args.backend);
        (connect.join().expect("connecting does not panic"), backend)
    });
    connected?;
    let reference = builder::image::Reference::parse(&args.name)?;
    println!("Pulling {reference}...");
    let backend = backend?;
    let pulled = registry
        .pull(&state.images, &args.name, Some(backend.as_ref()))
        .with_context(|| format!("failed to pull {reference}"))?;
    println!("Digest: {}", pulled.image.manifest_digest);
    if let Some(snapshot) = &pulled.snapshot {
        println!("Snapshot ref: {snapshot}");
    }
    println!("Size: {}", pulled.image.size());
    Ok(())
}

pub fn push(state: &State, args: PushArgs) -> Result<()> {
    let registry = Registry::new(args.flags.options(None)?, Reporter::for_stderr())?;
    let image = state.images.resolve(&args.name)?;
    let target = match (&args.target, &image.name) {
        (Some(target), _) => builder::image::Reference::parse(target)?,
        (None, Some(name)) => name.clone(),
        (None, None) => bail!(
            "image {} has no name: give the name to push it as (img push {} NAME:TAG)",
            image.id(),
            args.name
        ),
    };
    let shown = target.to_string();
    println!("Pushing {shown}...");
    let pushed = registry
        .push(&state.images, &args.name, Some(&shown))
        .with_context(|| format!("failed to push {shown}"))?;
    println!("Successfully pushed {}", pushed.reference);
    println!("Digest: {}", pushed.digest);
    Ok(())
}

pub fn login(args: LoginArgs) -> Result<()> {
    let host = args.registry.unwrap_or_else(|| "docker.io".to_string());
    let host = host
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let username = match args.username {
        Some(u) => u,
        None => prompt("Username: ")?,
    };
    let password = if args.password_stdin {
        let mut line = String::new();
        io::stdin().lock().read_line(&mut line)?;
        line.trim_end_matches(['\n', '\r']).to_string()
    } else {
        read_password()?
    };
    if username.is_empty() || password.is_empty() {
        bail!("a username and a password are needed to log in to {host}");
    }
    let registry = Registry::new(args.flags.options(None)?, Reporter::Quiet)?;
    let stored = registry::login(&registry, &host, &username, &password)?;
    eprintln!("Credentials stored in {stored}");
    println!("Login Succeeded");
    Ok(())
}

pub fn logout(args: LogoutArgs) -> Result<()> {
    let host = args.registry.unwrap_or_else(|| "docker.io".to_string());
    if registry::logout(&host)? {
        println!("Removed login credentials for {host}");
    } else {
        println!("Not logged in to {host}");
    }
    Ok(())
}

fn prompt(text: &str) -> Result<String> {
    if !io::stdin().is_terminal() {
        bail!("no username given (-u) and standard input is not a terminal");
    }
    eprint!("{text}");
    io::stderr().flush()?;
    let mut line = String::new();
    io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim().to_string())
}

/// Reads a password from the terminal without echoing it.
fn read_password() -> Result<String> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    let stdin = io::stdin();
    if !stdin.is_terminal() {
        bail!("no terminal to read a password from: use --password-stdin");
    }
    eprint!("Password: ");
    io::stderr().flush()?;
    let old = tcgetattr(&stdin)?;
    let mut quiet = old.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    tcsetattr(&stdin, SetArg::TCSANOW, &quiet)?;
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    tcsetattr(&stdin, SetArg::TCSANOW, &old)?;
    eprintln!();
    read?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Pulls images `img build` needs and lacks. Only fetches blobs: the build applies layers
/// itself, into the backend it already has open (one imgfs store per process).
pub struct BuildPuller<'a> {
    registry: Registry,
    store: &'a ImageStore,
    quiet: bool,
}

impl<'a> BuildPuller<'a> {
    /// With `quiet`, a pull prints nothing.
    pub fn new(
        store: &'a ImageStore,
        flags: &RegistryFlags,
        quiet: bool,
    ) -> Result<BuildPuller<'a>> {
        let reporter = if quiet {
            Reporter::Quiet
        } else {
            Reporter::for_stderr()
        };
        Ok(BuildPuller {
            registry: Registry::new(flags.options(None)?, reporter)?,
            store,
            quiet,
        })
    }
}

impl Puller for BuildPuller<'_> {
    fn pull(&self, name: &str) -> Result<(), registry::RegistryError> {
        if !self.quiet {
            eprintln!("Pulling {name}...");
        }
        self.registry.pull(self.store, name, None).map(|_| ())
    }
}

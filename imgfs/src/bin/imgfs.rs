//! The `imgfs` command line: store administration, layer import/export and inspection.
//! `main` only maps the result to an exit code; every command is a function below.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use imgfs::layer::{self, ChangeKind, ImportLimits};
use imgfs::{SnapshotKind, Store, StoreOptions};

#[path = "imgfs/mount.rs"]
mod mount;

#[derive(Parser)]
#[command(
    name = "imgfs",
    version,
    about = "Copy-on-write snapshot store and file system for container images"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct StoreArg {
    /// The store directory.
    #[arg(long, short = 's', env = "IMGFS_STORE")]
    store: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Create an empty store.
    Init {
        store: PathBuf,
        /// Size of a file chunk: the unit of copy-on-write and deduplication.
        #[arg(long, default_value_t = imgfs::store::DEFAULT_CHUNK_SIZE)]
        chunk_size: u32,
    },
    /// Apply an OCI layer (tar or tar+gzip, a file or - for stdin) as a new committed snapshot;
    /// prints the layer's diff id.
    Import {
        #[command(flatten)]
        store: StoreArg,
        /// Name of the new snapshot.
        #[arg(long)]
        name: String,
        /// Committed snapshot to apply the layer on (default: an empty tree).
        #[arg(long)]
        parent: Option<String>,
        /// Refuse layers with more entries than this.
        #[arg(long, default_value_t = ImportLimits::default().max_entries)]
        max_entries: u64,
        /// Refuse layers whose uncompressed tar is larger than this many bytes.
        #[arg(long, default_value_t = ImportLimits::default().max_bytes)]
        max_bytes: u64,
        layer: PathBuf,
    },
    /// Write a snapshot as an OCI layer tar: its diff from its parent, or with --full its whole tree.
    Export {
        #[command(flatten)]
        store: StoreArg,
        snapshot: String,
        /// Write the whole flattened tree instead of the diff from the parent.
        #[arg(long)]
        full: bool,
        /// Output file, or - for stdout.
        #[arg(short = 'o', long)]
        output: PathBuf,
    },
    /// List snapshots.
    #[command(alias = "ls")]
    List {
        #[command(flatten)]
        store: StoreArg,
    },
    /// Show a snapshot's parent, kind, creation time, and the bytes and inodes only it holds.
    Info {
        #[command(flatten)]
        store: StoreArg,
        snapshot: String,
    },
    /// Remove a snapshot (it must have no children) and free what only it used.
    Rm {
        #[command(flatten)]
        store: StoreArg,
        snapshots: Vec<String>,
    },
    /// Check every reference and chunk digest of a store; with --repair, fix reference counts
    /// and remove orphans (never data a snapshot refers to). Exits 1 if problems remain, and 2
    /// if all of them are what a killed writer left: opening the store for writing (any
    /// writing command, or --repair) recovers it.
    Fsck {
        store: PathBuf,
        #[arg(long)]
        repair: bool,
    },
    /// Mount a snapshot with FUSE: a committed one read-only, or with --writable a new active child
    /// of it (or an active snapshot itself). Stays in the foreground until unmounted (fusermount3
    /// -u, imgfs umount, SIGINT or SIGTERM); then commits the child as --commit NAME, if given,
    /// or keeps it active. If the mount process is killed (SIGKILL, a crash), the next command
    /// that opens the store for writing removes the child it named SNAPSHOT.mount-PID, and says
    /// so; a child named with --key stays.
    Mount(mount::Args),
    /// Unmount an imgfs mount and wait until its process has finished (and committed).
    Umount { mountpoint: PathBuf },
    /// List the paths added (A), changed (M) and deleted (D) from snapshot A to snapshot B.
    Diff {
        #[command(flatten)]
        store: StoreArg,
        a: String,
        b: String,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("IMGFS_LOG")
                .unwrap_or_else(|_| "warn,fuser=error".into()),
        )
        .with_writer(imgfs::logging::stderr)
        .init();
    imgfs::chunks::raise_open_file_limit();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imgfs: {e:#}");
            match e.downcast_ref::<NeedsRecovery>() {
                Some(_) => ExitCode::from(2),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// `fsck` of a store whose writer was killed half-way, which the next open for writing
/// recovers: not damage, so it has an exit status of its own.
#[derive(Debug, thiserror::Error)]
#[error("store {} needs recovery: open it for writing or run fsck --repair", .0.display())]
struct NeedsRecovery(PathBuf);

/// Opens a store for writing, after which the snapshots of killed mounts go.
fn open(s: &StoreArg) -> Result<Store> {
    let store = Store::open(&s.store)
        .with_context(|| format!("cannot open store {}", s.store.display()))?;
    remove_abandoned_mounts(&store);
    Ok(store)
}

/// Removes the active snapshots of `imgfs mount` processes that are gone (`imgfs::owner`),
/// one line each. Every command that opens a store for writing calls it. Failing to is no
/// reason to fail the command: the next writer tries again.
fn remove_abandoned_mounts(store: &Store) {
    match store.remove_abandoned_mounts() {
        Ok(removed) => {
            for a in removed {
                eprintln!("imgfs: removed {a}");
            }
        }
        Err(e) => eprintln!("imgfs: cannot remove the snapshots of killed mounts: {e}"),
    }
}

fn open_read_only(s: &StoreArg) -> Result<Store> {
    Store::open_read_only(&s.store)
        .with_context(|| format!("cannot open store {}", s.store.display()))
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init { store, chunk_size } => {
            Store::create(&store, StoreOptions { chunk_size })
                .with_context(|| format!("cannot create store {}", store.display()))?;
            println!("created store {}", store.display());
        }
        Command::Import {
            store,
            name,
            parent,
            max_entries,
            max_bytes,
            layer,
        } => {
            let s = open(&store)?;
            let limits = ImportLimits {
                max_entries,
                max_bytes,
                ..Default::default()
            };
            let input: Box<dyn std::io::Read> = if layer.as_os_str() == "-" {
                Box::new(std::io::stdin().lock())
            } else {
                Box::new(
                    std::fs::File::open(&layer)
                        .with_context(|| format!("cannot open layer {}", layer.display()))?,
                )
            };
            let report = layer::import_layer(&s, &name, parent.as_deref(), input, &limits)
                .with_context(|| format!("cannot import {} as {name}", layer.display()))?;
            println!("{}", report.diff_id);
        }
        Command::Export {
            store,
            snapshot,
            full,
            output,
        } => {
            let s = open_read_only(&store)?;
            let report = if output.as_os_str() == "-" {
                layer::export_layer(
                    &s,
                    &snapshot,
                    full,
                    BufWriter::new(std::io::stdout().lock()),
                )
                .map_err(anyhow::Error::from)
            } else {
                // 0o666 less the umask, as File::create makes it.
                imgfs::atomic::write_atomically(&output, 0o666, |f| {
                    let mut w = BufWriter::new(f);
                    let report = layer::export_layer(&s, &snapshot, full, &mut w)?;
                    w.flush()?;
                    Ok::<_, anyhow::Error>(report)
                })
            }
            .with_context(|| format!("cannot export snapshot {snapshot}"))?;
            eprintln!(
                "{} ({} entries, {} bytes)",
                report.diff_id, report.entries, report.bytes
            );
        }
        Command::List { store } => {
            let s = open_read_only(&store)?;
            let recs = s.list()?;
            let names: std::collections::HashMap<_, _> =
                recs.iter().map(|r| (r.id, r.name.clone())).collect();
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{:<40} {:<10} {:<40} CREATED",
                "NAME", "KIND", "PARENT"
            )?;
            for r in &recs {
                let parent = r
                    .parent
                    .and_then(|p| names.get(&p).cloned())
                    .unwrap_or_else(|| "-".into());
                writeln!(
                    out,
                    "{:<40} {:<10} {:<40} {}",
                    r.name,
                    kind(r.kind),
                    parent,
                    time(r.created.sec)
                )?;
            }
        }
        Command::Info { store, snapshot } => {
            let s = open_read_only(&store)?;
            let r = s.stat(&snapshot)?;
            let usage = s.usage(&snapshot)?;
            let parent = match r.parent {
                Some(_) => s
                    .list()?
                    .into_iter()
                    .find(|p| Some(p.id) == r.parent)
                    .map(|p| p.name),
                None => None,
            };
            println!("name:    {}", r.name);
            println!("kind:    {}", kind(r.kind));
            println!("parent:  {}", parent.as_deref().unwrap_or("-"));
            println!("depth:   {}", r.depth);
            println!("created: {}", time(r.created.sec));
            println!(
                "size:    {} ({} bytes only this snapshot holds)",
                bytesize::ByteSize(usage.bytes),
                usage.bytes
            );
            println!("inodes:  {}", usage.inodes);
            for (k, v) in &r.labels {
                println!("label:   {k}={v}");
            }
        }
        Command::Rm { store, snapshots } => {
            let s = open(&store)?;
            for name in snapshots {
                s.remove(&name)
                    .with_context(|| format!("cannot remove snapshot {name}"))?;
                println!("{name}");
            }
        }
        Command::Fsck { store, repair } => {
            // Asked before the open: a writer that starts later changes nothing that a
            // read-only open sees.
            let writer = if repair { None } else { Store::writer(&store) };
            let s = if repair {
                Store::open(&store)
            } else {
                Store::open_read_only(&store)
            }
            .with_context(|| format!("cannot open store {}", store.display()))?;
            if repair {
                remove_abandoned_mounts(&s);
            }
            let report = imgfs::fsck::check(&s, repair)?;
            // Not damage: what a killed mount left, which the next writer removes.
            for a in s.abandoned_mounts()? {
                println!(
                    "abandoned: {a} (the next command that opens the store for writing removes it)"
                );
            }
            println!("{report}");
            if let Some(pid) = writer.filter(|_| !report.is_clean()) {
                // Its work in progress looks like what a killed writer leaves, or worse.
                anyhow::bail!(
                    "{} problem(s) in store {}, which process {pid} has open for writing: its work in progress shows as problems; check again once it is done",
                    report.problems.len(),
                    store.display()
                );
            }
            if report.needs_recovery() {
                return Err(NeedsRecovery(store).into());
            }
            if !report.is_clean() {
                anyhow::bail!(
                    "{} problem(s) in store {}",
                    report.problems.len(),
                    store.display()
                );
            }
        }
        Command::Mount(args) => mount::run(args)?,
        Command::Umount { mountpoint } => mount::umount(&mountpoint)?,
        Command::Diff { store, a, b } => {
            let s = open_read_only(&store)?;
            let ta = s.tree_read_only(&a)?;
            let tb = s.tree_read_only(&b)?;
            let mut out = std::io::stdout().lock();
            for c in layer::diff::changes(&tb, Some(&ta))? {
                let tag = match c.kind {
                    ChangeKind::Added => 'A',
                    ChangeKind::Modified => 'M',
                    ChangeKind::Deleted => 'D',
                };
                writeln!(out, "{tag} /{}", String::from_utf8_lossy(&c.path))?;
            }
        }
    }
    Ok(())
}

fn kind(k: SnapshotKind) -> &'static str {
    match k {
        SnapshotKind::Active => "active",
        SnapshotKind::View => "view",
        SnapshotKind::Committed => "committed",
        SnapshotKind::Importing => "importing",
    }
}

/// Formats a Unix time as UTC `YYYY-MM-DD HH:MM:SS`.
fn time(sec: i64) -> String {
    let days = sec.div_euclid(86_400);
    let rem = sec.rem_euclid(86_400);
    // Civil-from-days (H. Hinnant's algorithm), to avoid a date crate for one line of output.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

//! The image commands: ls, du, rm, tag, inspect, save, load, import, unpack, prune.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use builder::image::{self, ArchiveFormat, ImportOptions, Reference};
use builder::state::{BackendKind, State};
use chrono::Utc;

/// Prints rows as columns separated by three spaces, as `docker images` and img do.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len() - 1;
        for (i, c) in cells.iter().enumerate() {
            out.push_str(c);
            if i < last {
                out.push_str(&" ".repeat(widths[i] - c.chars().count() + 3));
            }
        }
        out.push('\n');
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

fn human_size(bytes: u64) -> String {
    bytesize::ByteSize::b(bytes)
        .display()
        .iec_short()
        .to_string()
}

/// "3 minutes ago", like Docker's HumanDuration.
fn ago(t: chrono::DateTime<Utc>) -> String {
    let secs = (Utc::now() - t).num_seconds().max(0);
    let (n, unit) = match secs {
        0..=1 => return "Less than a second ago".to_owned(),
        2..=59 => (secs, "second"),
        60..=3599 => (secs / 60, "minute"),
        3600..=86_399 => (secs / 3600, "hour"),
        86_400..=1_209_599 => (secs / 86_400, "day"),
        1_209_600..=5_183_999 => (secs / 604_800, "week"),
        5_184_000..=63_071_999 => (secs / 2_592_000, "month"),
        _ => (secs / 31_536_000, "year"),
    };
    let s = if n == 1 { "" } else { "s" };
    format!("{n} {unit}{s} ago")
}

pub fn ls(state: &State) -> Result<()> {
    let mut rows = Vec::new();
    for img in state.images.list()? {
        rows.push(vec![
            img.display_name(),
            human_size(img.size()),
            ago(img.created),
            ago(img.updated),
            img.manifest_digest.to_string(),
        ]);
    }
    print!(
        "{}",
        table(
            &["NAME", "SIZE", "CREATED AT", "UPDATED AT", "DIGEST"],
            &rows
        )
    );
    Ok(())
}

pub fn du(state: &State) -> Result<()> {
    let items = state.disk_usage()?;
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| {
            vec![
                i.id.clone(),
                i.reclaimable.to_string(),
                human_size(i.size),
                i.description.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["ID", "RECLAIMABLE", "SIZE", "DESCRIPTION"], &rows)
    );
    let reclaimable: u64 = items.iter().filter(|i| i.reclaimable).map(|i| i.size).sum();
    let total: u64 = items.iter().map(|i| i.size).sum();
    println!("Reclaimable:\t{}", human_size(reclaimable));
    println!("Total:\t\t{}", human_size(total));
    Ok(())
}

pub fn prune(state: &State) -> Result<()> {
    let freed = state.prune()?;
    println!("Total:\t{}", human_size(freed));
    Ok(())
}

pub fn rm(state: &State, names: &[String]) -> Result<()> {
    let mut failed = false;
    for name in names {
        match state.images.untag(name) {
            Ok(_) => println!("Untagged: {name}"),
            Err(e) => {
                eprintln!("error: {name}: {e}");
                failed = true;
            }
        }
    }
    if failed {
        bail!("some images could not be removed");
    }
    Ok(())
}

pub fn tag(state: &State, source: &str, target: &str) -> Result<()> {
    let img = state.images.resolve(source)?;
    let target = Reference::parse(target)?;
    state.images.tag(&target, &img.manifest_descriptor)?;
    Ok(())
}

pub fn inspect(state: &State, names: &[String]) -> Result<()> {
    let mut out = Vec::new();
    for name in names {
        let img = state.images.resolve(name)?;
        out.push(serde_json::json!({
            "Id": img.id().to_string(),
            "RepoTags": img.name.iter().map(|n| n.familiar()).collect::<Vec<_>>(),
            "Name": img.name.as_ref().map(|n| n.to_string()),
            "Digest": img.manifest_digest.to_string(),
            "Created": img.config.created,
            "Architecture": img.config.architecture,
            "Os": img.config.os,
            "Author": img.config.author,
            "Size": img.size(),
            "Config": img.config.config,
            "RootFS": img.config.rootfs,
            "History": img.config.history,
            "Manifest": img.manifest,
        }));
    }
    let mut stdout = io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, &out)?;
    writeln!(stdout)?;
    Ok(())
}

#[derive(clap::Args)]
pub struct SaveArgs {
    /// Write to this file instead of standard output.
    #[arg(short = 'o', long)]
    output: Option<PathBuf>,
    /// docker-archive (what `docker load` reads) or oci-archive.
    #[arg(long, default_value = "docker-archive", value_parser = ["docker-archive", "docker", "oci-archive", "oci"])]
    format: String,
    #[arg(required = true)]
    names: Vec<String>,
}

pub fn archive_format(name: &str) -> ArchiveFormat {
    match name {
        "oci" | "oci-archive" => ArchiveFormat::Oci,
        _ => ArchiveFormat::Docker,
    }
}

/// Writes through a temporary file next to `path`, renamed into place only when complete, so
/// a failed save never leaves a truncated archive under the name.
pub fn write_atomically(path: &Path, f: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    imgfs::atomic::write_atomically(path, 0o600, |file| {
        let mut w = BufWriter::new(file);
        f(&mut w)?;
        w.flush()?;
        Ok(())
    })
}

pub fn save(state: &State, args: SaveArgs) -> Result<()> {
    let names: Vec<&str> = args.names.iter().map(String::as_str).collect();
    let format = archive_format(&args.format);
    match &args.output {
        Some(path) => write_atomically(path, |w| {
            image::save(&state.images, &names, format, w)?;
            Ok(())
        }),
        None => {
            if io::IsTerminal::is_terminal(&io::stdout()) {
                bail!("refusing to write an archive to a terminal: use -o FILE or redirect");
            }
            let mut out = BufWriter::new(io::stdout().lock());
            image::save(&state.images, &names, format, &mut out)?;
            out.flush()?;
            Ok(())
        }
    }
}

/// Loads images from an archive and unpacks each into `backend` (`unpack_into`). An image
/// whose layers cannot be unpacked (over the limits, not the tree its config describes) is
/// untagged again.
pub fn load(state: &State, input: Option<PathBuf>, backend: BackendKind) -> Result<()> {
    let reader: Box<dyn Read> = match &input {
        Some(p) => Box::new(BufReader::new(
            File::open(p).with_context(|| format!("failed to open {}", p.display()))?,
        )),
        None => Box::new(io::stdin().lock()),
    };
    let loaded = image::load(&state.images, reader)?;
    let backend = state.backend(backend)?;
    for l in &loaded {
        if let Err(e) = unpack_into(state, backend.as_ref(), l.id.as_ref()) {
            let shown = l.name.as_ref().map_or(l.id.to_string(), |n| n.familiar());
            if let Some(n) = &l.name {
                let _ = state.images.untag(&n.to_string());
            }
            return Err(e.context(format!("failed to load {shown}")));
        }
    }
    for l in &loaded {
        match &l.name {
            Some(n) => println!("Loaded image: {}", n.familiar()),
            None => println!("Loaded image ID: {}", l.id),
        }
    }
    Ok(())
}

/// Makes image `name`'s file tree a committed snapshot of `backend`, applying the layers it
/// lacks, as `docker load`, `docker import` and `img pull` unpack what they bring in: the first
/// build FROM the image then starts at once, and each layer is read through under the layer
/// limits by the command that brought it (a layer over them is refused there).
fn unpack_into(state: &State, backend: &dyn imgfs::Snapshotter, name: &str) -> Result<()> {
    let img = state.images.resolve(name)?;
    builder::build::ensure_image_snapshot(backend, &state.images, &img)?;
    Ok(())
}

#[derive(clap::Args)]
pub struct ImportArgs {
    /// The root file system: a tar (plain or gzip), or - for standard input.
    rootfs: PathBuf,
    name: String,
    /// Set the commit message of the layer's history entry.
    #[arg(short = 'm', long)]
    message: Option<String>,
    /// Apply a Dockerfile instruction to the config (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL,
    /// USER, VOLUME, WORKDIR), as `docker import --change` does.
    #[arg(short = 'c', long = "change")]
    changes: Vec<String>,
    /// The snapshot backend the image is unpacked into, for the builds and mounts that use it.
    #[arg(long, default_value = "fuse", env = "IMG_BACKEND")]
    backend: BackendKind,
    #[command(flatten)]
    pub limits: builder::limits::LimitArgs,
}

pub fn import(state: &State, args: ImportArgs) -> Result<()> {
    let name = Reference::parse(&args.name)?;
    let reader: Box<dyn Read> = if args.rootfs.as_os_str() == "-" {
        Box::new(io::stdin().lock())
    } else {
        Box::new(
            File::open(&args.rootfs)
                .with_context(|| format!("failed to open {}", args.rootfs.display()))?,
        )
    };
    let config = builder::build::config_changes(&args.changes)?;
    let comment = args.message.or_else(|| {
        Some(format!(
            "Imported from {}",
            if args.rootfs.as_os_str() == "-" {
                "-".to_owned()
            } else {
                args.rootfs.display().to_string()
            }
        ))
    });
    let loaded = image::import_rootfs(
        &state.images,
        reader,
        &name,
        ImportOptions { config, comment },
    )?;
    let backend = state.backend(args.backend)?;
    if let Err(e) = unpack_into(state, backend.as_ref(), loaded.id.as_ref()) {
        let _ = state.images.untag(&name.to_string());
        return Err(e.context(format!("failed to import {}", name.familiar())));
    }
    println!("{}", loaded.id);
    Ok(())
}

pub fn unpack(state: &State, name: &str, dir: &Path) -> Result<()> {
    let img = state.images.resolve(name)?;
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!("{} exists and is not empty", dir.display());
    }
    let created = !dir.exists();
    std::fs::create_dir_all(dir)?;
    let unpacked = (|| -> Result<()> {
        // Read-only when the image's snapshot is there: the store is then not open for writing
        // while the unpack may fill the disk, and other commands can write meanwhile.
        let backend = match state.backend_read_only(BackendKind::Fuse) {
            Ok(ro)
                if builder::build::ensure_image_snapshot(ro.as_ref(), &state.images, &img)
                    .is_ok() =>
            {
                ro
            }
            _ => state.backend(BackendKind::Fuse)?,
        };
        let snapshot =
            builder::build::ensure_image_snapshot(backend.as_ref(), &state.images, &img)?;
        if let Some(snapshot) = snapshot {
            builder::build::unpack_snapshot(backend.as_ref(), &snapshot, dir)?;
        }
        Ok(())
    })();
    if unpacked.is_err() {
        // A failed unpack (a full disk, say) leaves no partial tree: everything in `dir` is
        // ours, since it was empty or missing.
        let _ = if created {
            std::fs::remove_dir_all(dir)
        } else {
            std::fs::read_dir(dir).and_then(|entries| {
                entries.flatten().try_for_each(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => std::fs::remove_dir_all(e.path()),
                    _ => std::fs::remove_file(e.path()),
                })
            })
        };
    }
    unpacked
}

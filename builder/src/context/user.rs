//! User and group names resolved against an image's own /etc/passwd and /etc/group, read inside
//! the image root (symlinks in it never lead to the host's files).
//!
//! Two sets of rules, because Docker has two:
//! - `USER` (runc/containerd at run time): a uid absent from /etc/passwd runs with gid 0; a name
//!   alone also brings the supplementary groups that list the user in /etc/group.
//! - `COPY --chown` / `ADD --chown` (BuildKit): a uid alone means the same number as gid
//!   (`--chown=1234` is 1234:1234, as buildah 1.28 also does); a name alone takes the gid of its
//!   passwd line.
//!
//! Unknown names are errors in both.

use std::io::{self, BufRead, BufReader};
use std::path::Path;

use super::root::RootDir;

/// Why a user or group spec could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("unable to find user {name}: no matching entries in passwd file")]
    UnknownUser { name: String },
    #[error("unable to find group {name}: no matching entries in group file")]
    UnknownGroup { name: String },
    #[error("invalid user spec {spec:?}")]
    InvalidSpec { spec: String },
    #[error("cannot read {path} in the image: {source}")]
    Read { path: String, source: io::Error },
}

/// Ids a process or file gets from a user spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (USER only; always empty for `--chown`).
    pub additional_gids: Vec<u32>,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// The lines of an /etc file split on `:`, skipping blank lines and comments; a missing file
/// reads as empty, as runc treats it.
fn read_table(root: &RootDir, path: &str) -> Result<Vec<Vec<String>>, UserError> {
    let err = |source| UserError::Read {
        path: format!("/{path}"),
        source,
    };
    let file = match root.open_file(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(err(e)),
    };
    let mut rows = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(err)?;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        rows.push(line.split(':').map(str::to_string).collect());
    }
    Ok(rows)
}

fn passwd(root: &RootDir) -> Result<Vec<PasswdEntry>, UserError> {
    Ok(read_table(root, "etc/passwd")?
        .into_iter()
        .filter_map(|f| {
            Some(PasswdEntry {
                name: f.first()?.clone(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
            })
        })
        .collect())
}

fn groups(root: &RootDir) -> Result<Vec<GroupEntry>, UserError> {
    Ok(read_table(root, "etc/group")?
        .into_iter()
        .filter_map(|f| {
            Some(GroupEntry {
                name: f.first()?.clone(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect())
}

fn open_root(root: &Path) -> Result<RootDir, UserError> {
    RootDir::open(root).map_err(|source| UserError::Read {
        path: "/".to_string(),
        source,
    })
}

fn split_spec(spec: &str) -> Result<(&str, Option<&str>), UserError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() || group == Some("") {
        return Err(UserError::InvalidSpec {
            spec: spec.to_string(),
        });
    }
    Ok((user, group))
}

fn resolve_group(root: &RootDir, group: &str) -> Result<u32, UserError> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    groups(root)?
        .into_iter()
        .find(|g| g.name == group)
        .map(|g| g.gid)
        .ok_or_else(|| UserError::UnknownGroup {
            name: group.to_string(),
        })
}

/// Resolves a `USER` spec ("name", "name:group", "uid", "uid:gid", mixed) the way the runtime
/// does for the process it starts. An empty spec is root.
pub fn resolve_user(root: &Path, spec: &str) -> Result<User, UserError> {
    if spec.is_empty() {
        return Ok(User {
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
        });
    }
    let root = open_root(root)?;
    let (user, group) = split_spec(spec)?;
    let users = passwd(&root)?;
    let found = match user.parse::<u32>() {
        Ok(uid) => users
            .into_iter()
            .find(|u| u.uid == uid)
            .or(Some(PasswdEntry {
                name: String::new(),
                uid,
                // runc's default gid for a uid that has no passwd line.
                gid: 0,
            })),
        Err(_) => users.into_iter().find(|u| u.name == user),
    };
    let entry = found.ok_or_else(|| UserError::UnknownUser {
        name: user.to_string(),
    })?;
    match group {
        Some(group) => Ok(User {
            uid: entry.uid,
            gid: resolve_group(&root, group)?,
            // runc: supplementary groups only make sense in the implicit form.
            additional_gids: Vec::new(),
        }),
        None => {
            let mut additional_gids: Vec<u32> = if entry.name.is_empty() {
                Vec::new()
            } else {
                groups(&root)?
                    .into_iter()
                    .filter(|g| g.members.contains(&entry.name))
                    .map(|g| g.gid)
                    .collect()
            };
            additional_gids.dedup();
            Ok(User {
                uid: entry.uid,
                gid: entry.gid,
                additional_gids,
            })
        }
    }
}

/// Resolves a `--chown` spec for COPY and ADD the way BuildKit does: "uid" is uid:uid, "name"
/// takes its passwd gid, and an explicit group (name or number) wins.
pub fn resolve_chown(root: &Path, spec: &str) -> Result<(u32, u32), UserError> {
    let (user, group) = split_spec(spec)?;
    let root_dir = std::cell::OnceCell::new();
    let root_dir = || -> Result<&RootDir, UserError> {
        if root_dir.get().is_none() {
            let _ = root_dir.set(open_root(root)?);
        }
        Ok(root_dir.get().expect("set above"))
    };
    let (uid, default_gid) = match user.parse::<u32>() {
        Ok(uid) => (uid, uid),
        Err(_) => {
            let entry = passwd(root_dir()?)?
                .into_iter()
                .find(|u| u.name == user)
                .ok_or_else(|| UserError::UnknownUser {
                    name: user.to_string(),
                })?;
            (entry.uid, entry.gid)
        }
    };
    let gid = match group {
        None => default_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => resolve_group(root_dir()?, g)?,
        },
    };
    Ok((uid, gid))
}

//! The `img` binary's integration tests: builds compared with buildah's, the build cache, error
//! cases and the image commands. Each test has its own state dir and buildah storage.
//!
//! These need root, runc, /dev/fuse, buildah, skopeo and umoci. Without them a test prints why
//! and passes, except with CI=true, where it fails: CI must run them.
//!
//! With `IMG_TEST_USER=NAME` every img the tests start through `img_command` (the `Rig`, the
//! registry tests) runs as that ordinary user, through setpriv, with a state dir and HOME the
//! user owns; the peers (buildah, skopeo, umoci) and the checks stay root's. tools/test runs the
//! build and registry tests a second time that way, as the user `tests`.

mod build;
mod cache;
mod cli;
mod commands;
mod errors;
mod full_disk;
mod interrupt;
mod limits;
mod mount;
mod pipes;
mod progress;
mod registry;
mod registry_auth;
mod registry_limits;
mod unprivileged;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;
use tests::images::{self, Buildah, ImageView};

/// The programs the tests run besides img.
const PEERS: [&str; 4] = ["runc", "buildah", "skopeo", "umoci"];

/// The backends every build test runs on.
pub const BACKENDS: [&str; 2] = ["fuse", "overlayfs"];

pub fn can_run() -> bool {
    tests::can_run(true, &PEERS)
}

/// The ordinary user img runs as in these tests (`IMG_TEST_USER`), or `None` for root.
pub fn test_user() -> Option<&'static nix::unistd::User> {
    static USER: OnceLock<Option<nix::unistd::User>> = OnceLock::new();
    USER.get_or_init(|| {
        let name = std::env::var("IMG_TEST_USER")
            .ok()
            .filter(|n| !n.is_empty())?;
        let user = nix::unistd::User::from_name(&name)
            .unwrap()
            .unwrap_or_else(|| panic!("IMG_TEST_USER={name}: no such user (tools/setup)"));
        // Ordinary users mount imgfs through /dev/fuse; see unprivileged.rs.
        fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666)).unwrap();
        Some(user)
    })
    .as_ref()
}

/// A temporary directory in /var/tmp that img may write: owned by the test user, if any.
pub fn img_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    if let Some(user) = test_user() {
        nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid)).unwrap();
    }
    dir
}

/// The img under test, run as the test user (with `home` as HOME) when there is one.
pub fn img_command(home: &Path) -> Command {
    let Some(user) = test_user() else {
        return Command::new(env!("CARGO_BIN_EXE_img"));
    };
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .arg("--init-groups")
        .arg(env!("CARGO_BIN_EXE_img"))
        .env("HOME", home)
        .env_remove("XDG_DATA_HOME");
    cmd
}

/// The base image all tests build on, made once per test process: busybox plus the mount points
/// and files that runc and buildah bind-mount over. Docker's builder removes such mount points
/// after each step and buildah 1.28 leaves them in the image (empty `/etc/hosts`, `/proc`, ...),
/// so a base that has them keeps the comparison about the Dockerfile.
pub struct Base {
    _dir: tempfile::TempDir,
    pub layout: PathBuf,
    pub docker_archive: PathBuf,
    /// The layout as an OCI archive: its layer gzip-compressed, as a pulled image's are.
    pub oci_archive: PathBuf,
}

pub fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    /// A static is never dropped, so its dir is removed when the test process exits.
    extern "C" fn remove_base() {
        if let Some(base) = BASE.get() {
            let _ = fs::remove_dir_all(base._dir.path());
        }
    }
    BASE.get_or_init(|| {
        // SAFETY: registers a function that takes no arguments and does not unwind (its errors
        // are ignored), to run at exit.
        unsafe { libc::atexit(remove_base) };
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let layout = dir.path().join("layout");
        let rootfs = tests::fixtures::busybox_rootfs_tar().unwrap();
        images::oci_image_from_rootfs(&rootfs, &layout, "busybox", |root| {
            for d in ["dev", "proc", "run", "sys"] {
                fs::create_dir_all(root.join(d))?;
            }
            for f in ["etc/hosts", "etc/hostname", "etc/resolv.conf"] {
                fs::write(root.join(f), "")?;
            }
            Ok(())
        })
        .unwrap();
        // The test user loads the archive too.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let docker_archive = dir.path().join("busybox.tar");
        images::run(
            Command::new("skopeo")
                .args(["copy", "-q"])
                .arg(format!("oci:{}:busybox", layout.display()))
                .arg(format!(
                    "docker-archive:{}:busybox:latest",
                    docker_archive.display()
                )),
        )
        .unwrap();
        fs::set_permissions(&docker_archive, fs::Permissions::from_mode(0o644)).unwrap();
        let oci_archive = dir.path().join("busybox-oci.tar");
        images::oci_archive(&layout, &oci_archive).unwrap();
        fs::set_permissions(&oci_archive, fs::Permissions::from_mode(0o644)).unwrap();
        Base {
            _dir: dir,
            layout,
            docker_archive,
            oci_archive,
        }
    })
}

/// One test's img state dir and buildah storage, both holding `busybox:latest`.
pub struct Rig {
    pub dir: tempfile::TempDir,
    pub state: PathBuf,
    pub buildah: Buildah,
}

impl Rig {
    /// A state holding busybox, unpacked into the default backend (fuse).
    pub fn create() -> Rig {
        Rig::create_on("fuse")
    }

    /// A state holding busybox, unpacked into `backend` only.
    pub fn create_on(backend: &str) -> Rig {
        let dir = img_dir();
        let state = dir.path().join("img");
        let buildah = Buildah::new(&dir.path().join("buildah"), "vfs");
        let rig = Rig {
            dir,
            state,
            buildah,
        };
        let base = base();
        // From the OCI archive: a gzip layer, as an image pulled from a registry has, so a
        // push sends it as it is (a docker-archive's layers are plain tars, which a push
        // compresses: `image::distribute`).
        // The archive's `ref.name` is a bare tag, which names no image: tag it by its ID.
        let archive = base.oci_archive.to_str().unwrap();
        let loaded = rig.img_ok(&["load", "--backend", backend, "-i", archive]);
        let id = loaded
            .trim()
            .strip_prefix("Loaded image ID: ")
            .unwrap_or_else(|| panic!("img load printed {loaded:?}"));
        rig.img_ok(&["tag", id, "busybox"]);
        if let Some(user) = test_user() {
            // The state is the user's own, not a subordinate id's or root's.
            let meta = fs::metadata(rig.state.join("images.json")).unwrap();
            assert_eq!(
                std::os::unix::fs::MetadataExt::uid(&meta),
                user.uid.as_raw()
            );
        }
        rig.buildah
            .load(&base.layout, "busybox", "docker.io/library/busybox:latest")
            .unwrap();
        rig
    }

    /// `img -s STATE args...`.
    pub fn img(&self, args: &[&str]) -> Output {
        img_command(self.dir.path())
            .arg("-s")
            .arg(&self.state)
            .args(args)
            .output()
            .unwrap()
    }

    /// `img` that must succeed; returns its stdout.
    pub fn img_ok(&self, args: &[&str]) -> String {
        let out = self.img(args);
        assert!(
            out.status.success(),
            "img {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `img` that must succeed; returns its standard error (what builds print).
    pub fn img_ok_stderr(&self, args: &[&str]) -> String {
        let out = self.img(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "img {args:?} failed:\n{stderr}");
        stderr
    }

    /// Builds `context` with img on `backend` as `tag` and reads the image back through an OCI
    /// archive, as another tool would.
    pub fn img_build(&self, context: &Path, backend: &str, tag: &str, extra: &[&str]) -> ImageView {
        let mut args = vec!["build", "--backend", backend, "-t", tag];
        args.extend_from_slice(extra);
        args.push(context.to_str().unwrap());
        self.img_ok(&args);
        self.img_view(tag)
    }

    pub fn img_view(&self, tag: &str) -> ImageView {
        let archive = self
            .dir
            .path()
            .join(format!("{}.tar", tag.replace([':', '/'], "_")));
        self.img_ok(&[
            "save",
            "--format",
            "oci-archive",
            "-o",
            archive.to_str().unwrap(),
            tag,
        ]);
        let t = tag.rsplit_once(':').map_or("latest", |(_, t)| t);
        ImageView::of_oci_archive(&archive, t).unwrap()
    }

    /// Builds `context` with buildah as `tag` and reads it back: the tree through an OCI layout,
    /// the config as buildah keeps it in Docker format.
    pub fn buildah_build(&self, context: &Path, tag: &str, extra: &[&str]) -> ImageView {
        self.buildah.bud(context, tag, extra).unwrap();
        let layout = self
            .dir
            .path()
            .join(format!("layout-{}", tag.replace([':', '/'], "_")));
        let name = format!("localhost/{tag}");
        self.buildah.export(&name, &layout, "x").unwrap();
        let mut view = ImageView::of_layout(&layout, "x").unwrap();
        view.config = self.buildah.docker_config(&name).unwrap();
        view
    }
}

/// A build context: a temporary directory with `files` (path, content) and a Dockerfile.
pub fn context(dockerfile: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    // Readable by the test user, if any, like the files (the umask is 022).
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
    for (path, content) in files {
        let p = dir.path().join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }
    dir
}

/// The parts of an image config a Dockerfile decides, with empty values and tool-specific
/// fields (buildah's version label, Docker's legacy container fields) left out.
pub fn normalized_config(config: &Value) -> BTreeMap<String, Value> {
    const IGNORED: [&str; 9] = [
        "Hostname",
        "Domainname",
        "AttachStdin",
        "AttachStdout",
        "AttachStderr",
        "Tty",
        "OpenStdin",
        "StdinOnce",
        "Image",
    ];
    let mut out = BTreeMap::new();
    let Some(obj) = config.as_object() else {
        return out;
    };
    for (k, v) in obj {
        if IGNORED.contains(&k.as_str()) {
            continue;
        }
        let mut v = v.clone();
        // Docker replaces a redefined variable in place; buildah 1.28 moves it to the end. The
        // set of variables and their values must agree, their order need not.
        if k == "Env"
            && let Some(env) = v.as_array_mut()
        {
            env.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
        }
        if k == "Labels"
            && let Some(labels) = v.as_object_mut()
        {
            labels.remove("io.buildah.version");
        }
        let empty = match &v {
            Value::Null => true,
            Value::String(s) => s.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::Object(o) => o.is_empty(),
            Value::Bool(b) => !b,
            Value::Number(_) => false,
        };
        if !empty {
            out.insert(k.clone(), v);
        }
    }
    out
}

/// Builds `ctx` with buildah and with img on every backend, and checks that the images have the
/// same file tree and config. Returns img's image (from the last backend) for further checks.
pub fn same_as_buildah(rig: &Rig, ctx: &Path, tag: &str, extra: &[&str]) -> ImageView {
    let theirs = rig.buildah_build(ctx, tag, extra);
    let mut last = None;
    for backend in BACKENDS {
        let ours = rig.img_build(ctx, backend, &format!("{tag}-{backend}"), extra);
        let diff = ours.tree.diff(&theirs.tree);
        assert!(
            diff.is_empty(),
            "{backend}: img's tree differs from buildah's:\n{}",
            diff.join("\n")
        );
        assert_eq!(
            normalized_config(&ours.config),
            normalized_config(&theirs.config),
            "{backend}: img's config differs from buildah's"
        );
        last = Some(ours);
    }
    last.unwrap()
}

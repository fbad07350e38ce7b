//! Why a build step failed (`StepError`): the cause as it came (a snapshot, executor, context,
//! image store or registry error, or the text of a refused instruction), turned into text only
//! where it is displayed. `BuildError::Step` adds where in the Dockerfile it happened.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use crate::context::{ContextError, UserError};
use crate::dockerfile::ParseError;
use crate::image::StoreError;
use crate::registry::RegistryError;
use crate::runc::ExecError;

/// Why a step (or the work around a build: storing the image, unpacking its tree) failed.
#[derive(Debug, Error)]
pub enum StepError {
    /// An instruction img refuses or cannot carry out as written (its own words).
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Context(#[from] ContextError),
    #[error("{0}")]
    User(#[from] UserError),
    #[error("failed to create {what}: {source}")]
    CreateDir { what: String, source: ContextError },
    #[error("{0}")]
    Exec(#[from] ExecError),
    #[error("process {argv:?} did not complete successfully: exit code: {code}")]
    ExitCode { argv: String, code: i32 },
    /// A snapshot operation of the backend (prepare, view, remove).
    #[error("{0}")]
    Snapshot(#[from] imgfs::Error),
    #[error("failed to mount {what}: {source}")]
    Mount { what: String, source: io::Error },
    #[error("failed to unmount: {0}")]
    Unmount(io::Error),
    #[error("failed to write the layer: {0}")]
    WriteLayer(imgfs::Error),
    #[error("failed to commit: {0}")]
    Commit(imgfs::Error),
    /// An I/O error on a stream that has no path: a pipe.
    #[error("{0}")]
    Stream(io::Error),
    /// A layer of the image could not be applied to make its snapshot.
    #[error("failed to apply layer {digest}: {source}")]
    Apply {
        digest: String,
        source: imgfs::Error,
    },
    #[error("the image has {layers} layers but {diff_ids} diff ids")]
    LayerCount { layers: usize, diff_ids: usize },
    #[error("layer {digest} has diff id {actual} but the image config says {expected}")]
    DiffId {
        digest: String,
        actual: String,
        expected: String,
    },
    #[error("layer {digest}: {source}")]
    Layer { digest: String, source: StoreError },
    #[error("{0}")]
    Image(#[from] StoreError),
    #[error("{0}")]
    Digest(#[from] oci_spec::OciSpecError),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("failed to store the cache record: {0}")]
    Cache(io::Error),
    #[error("failed to pull {name}: {source}")]
    Pull { name: String, source: RegistryError },
    #[error("base image {image}: {source}")]
    BaseImage {
        image: String,
        source: Box<StepError>,
    },
    #[error("--from={from}: {source}")]
    From {
        from: String,
        source: Box<StepError>,
    },
    #[error("ONBUILD trigger {trigger:?}: {source}")]
    OnBuild { trigger: String, source: ParseError },
    #[error("--change {change:?}: {message}")]
    Change { change: String, message: String },
    #[error("failed to export {snapshot}: {source}")]
    Export {
        snapshot: String,
        source: imgfs::Error,
    },
    #[error("{}", imgfs::space::io_message("unpack into", &dir.display(), source))]
    Unpack { dir: PathBuf, source: io::Error },
    /// An I/O error; the path says where, the message is the error's own (or, when the disk is
    /// full, says what was being written).
    #[error("{}", io_text(path, source))]
    Io { path: PathBuf, source: io::Error },
}

fn io_text(path: &std::path::Path, source: &io::Error) -> String {
    if imgfs::space::is_no_space(source) {
        imgfs::space::io_message("write", &path.display(), source)
    } else {
        source.to_string()
    }
}

impl StepError {
    /// An I/O error on `path`.
    pub(super) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> StepError {
        let path = path.into();
        move |source| StepError::Io { path, source }
    }
}

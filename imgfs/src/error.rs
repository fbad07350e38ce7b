//! The library's error type, and its one mapping to errno values for the FUSE adapter.

use std::path::PathBuf;

use crate::ids::Ino;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the store and its file operations can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}: no such file or directory")]
    NotFound(String),
    #[error("{0}: already exists")]
    Exists(String),
    #[error("{0}: not a directory")]
    NotDir(String),
    #[error("{0}: is a directory")]
    IsDir(String),
    #[error("{0}: directory not empty")]
    NotEmpty(String),
    #[error("{0}: invalid argument")]
    Invalid(String),
    #[error("{0}: too many levels of symbolic links")]
    Loop(String),
    #[error("{0}: file name too long")]
    NameTooLong(String),
    #[error("{0}: no such attribute")]
    NoAttr(String),
    #[error("{0}: read-only snapshot")]
    ReadOnly(String),
    #[error("{0}: operation not permitted")]
    NotPermitted(String),
    #[error("{0}: busy (open for passthrough reads)")]
    Busy(String),
    #[error("inode {0}: stale (no longer in this snapshot)")]
    Stale(Ino),
    #[error("store {path} is locked by pid {pid}")]
    Locked { path: PathBuf, pid: String },
    #[error("{0}")]
    Layer(String),
    #[error("layer limit exceeded: {0}")]
    Limit(String),
    #[error("store is corrupt: {0}")]
    Corrupt(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("metadata database: {0}")]
    Db(String),
    /// The file system is full, or would be too full for the metadata database after the write
    /// (`space`); nothing was written. Holds what was being done, in the "-ing" form.
    #[error("no space left on device while {0}")]
    NoSpace(String),
}

impl Error {
    /// The errno a FUSE reply carries for this error. This is the only place that decides it.
    pub fn errno(&self) -> i32 {
        match self {
            Error::NotFound(_) => libc::ENOENT,
            Error::Exists(_) => libc::EEXIST,
            Error::NotDir(_) => libc::ENOTDIR,
            Error::IsDir(_) => libc::EISDIR,
            Error::NotEmpty(_) => libc::ENOTEMPTY,
            Error::Invalid(_) => libc::EINVAL,
            Error::Loop(_) => libc::ELOOP,
            Error::NameTooLong(_) => libc::ENAMETOOLONG,
            Error::NoAttr(_) => libc::ENODATA,
            Error::ReadOnly(_) => libc::EROFS,
            Error::NotPermitted(_) => libc::EPERM,
            Error::Stale(_) => libc::ESTALE,
            Error::Busy(_) => libc::ETXTBSY,
            Error::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            Error::NoSpace(_) => libc::ENOSPC,
            Error::Locked { .. }
            | Error::Layer(_)
            | Error::Limit(_)
            | Error::Corrupt(_)
            | Error::Db(_) => libc::EIO,
        }
    }

    /// An I/O error with what was being done (`"write pack 3"`). ENOSPC and EDQUOT become
    /// `NoSpace`, whose message says what was being done in the "-ing" form.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        let context = context.into();
        if crate::space::is_no_space(&source) {
            return Error::NoSpace(crate::space::doing(&context));
        }
        Error::Io { context, source }
    }
}

/// Adds a description of what was being done to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(context(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_reads_no_space_left_while_doing_what() {
        let e = Error::io(
            "write object pack 3",
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert_eq!(
            e.to_string(),
            "no space left on device while writing object pack 3"
        );
        assert_eq!(e.errno(), libc::ENOSPC);
        let e = Error::io(
            "copy up a chunk",
            std::io::Error::from_raw_os_error(libc::EDQUOT),
        );
        assert_eq!(
            e.to_string(),
            "no space left on device while copying up a chunk"
        );
    }
}

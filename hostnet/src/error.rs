//! The one error type of the host layer: a path others could have written, or a file
//! operation that failed.

/// What went wrong with a host file or directory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The path exists and others could have written it ([`crate::file_trust`]).
    #[error("refusing {path}: it {reason}")]
    Untrusted { path: String, reason: String },
    /// Joining a network namespace failed.
    #[error("enter netns {path}: {source}")]
    Enter {
        path: String,
        #[source]
        source: nix::errno::Errno,
    },
    /// Work run inside a network namespace panicked.
    #[error("the thread inside netns {path} panicked")]
    ThreadPanicked { path: String },
    /// A file operation failed: `op` names it ("stat", "write"...).
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: &std::path::Path, source: std::io::Error) -> Error {
        Error::Io {
            op,
            path: path.display().to_string(),
            source,
        }
    }
}

/// Results of the host layer.
pub type Result<T> = std::result::Result<T, Error>;

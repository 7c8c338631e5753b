//! What went wrong, in the service's own words.
//!
//! The domain and the engine return [`Error`]: a kind a caller can act on
//! (fix the request, retry later, ask for something else) and a message for
//! people. They never pick an HTTP status: `http::outcome` maps each kind to
//! a status and an OperationOutcome, in one table.
//!
//! [`PortError`] is what a port (a store, the queue) reports: classified by
//! what the caller can do about it. The ports re-export it.

use std::sync::Arc;

/// An error of a use case.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The request is wrong; `param` names the parameter when one is to
    /// blame.
    #[error("{message}")]
    Invalid {
        param: Option<&'static str>,
        message: String,
    },
    /// Well-formed, but asks for something the service does not do.
    #[error("{0}")]
    NotSupported(String),
    #[error("{0}")]
    NotFound(String),
    /// It existed and was deleted.
    #[error("{0}")]
    Gone(String),
    /// The caller may not do or see this.
    #[error("{0}")]
    Forbidden(String),
    /// The state does not allow it now (a name taken, a change lost to a
    /// concurrent one).
    #[error("{0}")]
    Conflict(String),
    /// A body or request larger than the service takes.
    #[error("{0}")]
    TooLarge(String),
    /// The service could answer but will not synchronously: too much to
    /// compute or send (the message says what to use instead).
    #[error("{0}")]
    TooCostly(String),
    /// Well-formed, but beyond what the store can do at once (a transaction
    /// larger than its atomic write limit).
    #[error("{0}")]
    BeyondStore(String),
    /// Too many requests of this caller at once.
    #[error("{message}")]
    Throttled {
        message: String,
        retry_after_secs: u64,
    },
    /// The service cannot answer now; retrying later may help.
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after_secs: u64,
    },
    /// A port failed; its error says whether a retry may help.
    #[error("{}", store_message(.0))]
    Store(#[from] PortError),
    /// A fault of the service itself.
    #[error("{0}")]
    Internal(String),
}

/// Seconds a client is told to wait after a transient store failure.
pub const STORE_RETRY_SECS: u64 = 5;

/// What a client is told of a store failure (the cause goes to the logs).
fn store_message(e: &PortError) -> String {
    match e {
        PortError::Conflict => "The resource changed concurrently; retry".into(),
        PortError::NotFound => "Not found".into(),
        PortError::Unsupported(m) => m.clone(),
        PortError::AlreadyExists => "Already exists".into(),
        PortError::Transient { .. } => "Storage is unavailable; retry later".into(),
        PortError::Permanent { what, .. } => format!("The server failed: {what}"),
    }
}

impl Error {
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::Invalid {
            param: None,
            message: message.into(),
        }
    }
    /// The request is wrong in parameter `param`.
    pub fn invalid_param(param: &'static str, message: impl Into<String>) -> Self {
        Error::Invalid {
            param: Some(param),
            message: message.into(),
        }
    }
    pub fn not_supported(message: impl Into<String>) -> Self {
        Error::NotSupported(message.into())
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Error::NotFound(message.into())
    }
    pub fn gone(message: impl Into<String>) -> Self {
        Error::Gone(message.into())
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Error::Forbidden(message.into())
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Error::Conflict(message.into())
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Error::TooLarge(message.into())
    }
    pub fn too_costly(message: impl Into<String>) -> Self {
        Error::TooCostly(message.into())
    }
    pub fn beyond_store(message: impl Into<String>) -> Self {
        Error::BeyondStore(message.into())
    }
    pub fn throttled(message: impl Into<String>, retry_after_secs: u64) -> Self {
        Error::Throttled {
            message: message.into(),
            retry_after_secs,
        }
    }
    pub fn unavailable(message: impl Into<String>, retry_after_secs: u64) -> Self {
        Error::Unavailable {
            message: message.into(),
            retry_after_secs,
        }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Error::Internal(message.into())
    }

    /// The same error, naming `param` as the one to blame if it is an
    /// `Invalid` that names none yet.
    pub fn about(self, param: &'static str) -> Self {
        match self {
            Error::Invalid {
                param: None,
                message,
            } => Error::Invalid {
                param: Some(param),
                message,
            },
            other => other,
        }
    }

    /// Nothing is there: asked of the domain or told by a store.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound(_) | Error::Store(PortError::NotFound))
    }

    /// The message for people (what `Display` writes).
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// The same error with its message prefixed (where in a bundle, which
    /// field): the kind and the retry hint stay.
    pub fn within(self, context: &str) -> Self {
        let at = |m: String| format!("{context}: {m}");
        match self {
            Error::Invalid { param, message } => Error::Invalid {
                param,
                message: at(message),
            },
            Error::NotSupported(m) => Error::NotSupported(at(m)),
            Error::NotFound(m) => Error::NotFound(at(m)),
            Error::Gone(m) => Error::Gone(at(m)),
            Error::Forbidden(m) => Error::Forbidden(at(m)),
            Error::Conflict(m) => Error::Conflict(at(m)),
            Error::TooLarge(m) => Error::TooLarge(at(m)),
            Error::TooCostly(m) => Error::TooCostly(at(m)),
            Error::BeyondStore(m) => Error::BeyondStore(at(m)),
            Error::Throttled {
                message,
                retry_after_secs,
            } => Error::Throttled {
                message: at(message),
                retry_after_secs,
            },
            Error::Unavailable {
                message,
                retry_after_secs,
            } => Error::Unavailable {
                message: at(message),
                retry_after_secs,
            },
            // A store error keeps what a client can do about it (the
            // status it maps to), told in words with the context.
            Error::Store(p) => {
                let message = at(store_message(&p));
                match p {
                    PortError::Conflict | PortError::AlreadyExists => Error::Conflict(message),
                    PortError::NotFound => Error::NotFound(message),
                    PortError::Unsupported(_) => Error::BeyondStore(message),
                    PortError::Transient { .. } => Error::Unavailable {
                        message,
                        retry_after_secs: STORE_RETRY_SECS,
                    },
                    PortError::Permanent { .. } => Error::Internal(message),
                }
            }
            Error::Internal(m) => Error::Internal(at(m)),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The cause behind a backend error, kept for logs (never shown to clients).
pub type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong at a port, classified by what the caller can do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PortError {
    /// A conditional write lost: someone else changed the item first.
    #[error("conditional write failed: the item changed concurrently")]
    Conflict,
    #[error("already exists")]
    AlreadyExists,
    #[error("not found")]
    NotFound,
    /// The store cannot do this (e.g. a transaction larger than the store's
    /// atomic write limit); retrying will not help.
    #[error("{0}")]
    Unsupported(String),
    /// Retrying later may help: throttling, timeouts, 5xx answers, lost
    /// connections. `what` says it in words a client may read.
    #[error("{what}: {cause}")]
    Transient {
        what: String,
        #[source]
        cause: Cause,
    },
    /// Retrying will not help: validation, access denied, a missing table
    /// or bucket, a corrupt record. `what` says it in words a client may
    /// read; `cause` is for the logs.
    #[error("{what}: {cause}")]
    Permanent {
        what: String,
        #[source]
        cause: Cause,
    },
}

impl PortError {
    pub fn transient(
        what: impl Into<String>,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        PortError::Transient {
            what: what.into(),
            cause: Arc::from(cause.into()),
        }
    }

    pub fn permanent(
        what: impl Into<String>,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        PortError::Permanent {
            what: what.into(),
            cause: Arc::from(cause.into()),
        }
    }

    /// A stored record that cannot be read: retrying reads it again.
    pub fn corrupt(what: impl Into<String>, cause: impl std::fmt::Display) -> Self {
        PortError::permanent(what, cause.to_string())
    }

    /// Whether handling the work again later may succeed. A lost race is
    /// retryable too: the next attempt reads the winner's state.
    pub fn is_retryable(&self) -> bool {
        matches!(self, PortError::Transient { .. } | PortError::Conflict)
    }

    /// What a client may be told: our own words, never the backend's text.
    pub fn public_message(&self) -> String {
        match self {
            PortError::Transient { what, .. } | PortError::Permanent { what, .. } => what.clone(),
            other => other.to_string(),
        }
    }
}

/// Errors compare by kind and public words (causes are for logs).
impl PartialEq for PortError {
    fn eq(&self, other: &Self) -> bool {
        use PortError::*;
        match (self, other) {
            (Conflict, Conflict) | (AlreadyExists, AlreadyExists) | (NotFound, NotFound) => true,
            (Unsupported(a), Unsupported(b)) => a == b,
            (Transient { what: a, .. }, Transient { what: b, .. })
            | (Permanent { what: a, .. }, Permanent { what: b, .. }) => a == b,
            _ => false,
        }
    }
}

pub type PortResult<T> = Result<T, PortError>;

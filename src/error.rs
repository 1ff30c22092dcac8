//! The one domain error type shared by the task layer and the store. The API
//! layer maps it to a gRPC `Status` (and so to both REST envelopes) in
//! `api::status`.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input from the caller (HTTP 400, INVALID_REQUEST).
    #[error("{0}")]
    InvalidRequest(String),
    /// A task, step or artifact that does not exist (HTTP 404).
    #[error("{kind} {id} not found")]
    NotFound { kind: Resource, id: String },
    /// The task has a run in progress (HTTP 409, TASK_ALREADY_RUNNING).
    #[error("task {0} is already running")]
    TaskAlreadyRunning(String),
    /// Out of capacity (HTTP 429, INSUFFICIENT_RESOURCES).
    #[error("{message}")]
    InsufficientResources {
        message: String,
        retry_after: Option<Duration>,
    },
    /// No valid API key (HTTP 401, UNAUTHENTICATED).
    #[error("{0}")]
    Unauthenticated(String),
    /// Too many requests from one client (HTTP 429, RATE_LIMIT_EXCEEDED).
    #[error("rate limit exceeded: at most {per_minute} requests per minute")]
    RateLimited {
        per_minute: u32,
        retry_after: Duration,
    },
    /// An upload over the size limit (HTTP 413).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The LLM provider failed after its retries (HTTP 502, OPENAI_API_ERROR);
    /// `status` is the provider's HTTP status when it answered at all.
    #[error("{message}")]
    Provider {
        provider: String,
        status: Option<u16>,
        message: String,
    },
    /// agentd is shutting down (HTTP 503, SERVICE_UNAVAILABLE, with Retry-After).
    #[error("{0}")]
    Unavailable(String),
    /// Not available in this build (HTTP 501).
    #[error("{0}")]
    Unimplemented(String),
    /// Anything else: a bug or an I/O failure (HTTP 500). The message is logged;
    /// callers see a generic text.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Task,
    Step,
    Artifact,
    /// A path agentd does not serve.
    Route,
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Resource::Task => "task",
            Resource::Step => "step",
            Resource::Artifact => "artifact",
            Resource::Route => "route",
        })
    }
}

impl Error {
    pub fn not_found(kind: Resource, id: impl Into<String>) -> Self {
        Error::NotFound {
            kind,
            id: id.into(),
        }
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidRequest(msg.into())
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Internal(anyhow::Error::new(e).context("database"))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Internal(anyhow::Error::new(e).context("file system"))
    }
}

/// A configuration that cannot be used (an unknown provider or agent type,
/// a missing key, a named file that is absent or invalid) is the caller's
/// request to fix: 400, with the engine's message.
impl From<agentd_engine::config::ConfigError> for Error {
    fn from(e: agentd_engine::config::ConfigError) -> Self {
        Error::InvalidRequest(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use agentd_engine::config::{ConfigError, validate_agent_type};

    use super::*;

    #[test]
    fn a_config_error_is_an_invalid_request_with_its_message() {
        let checked = || -> Result<()> { Ok(validate_agent_type("other")?) };
        let Err(Error::InvalidRequest(message)) = checked() else {
            panic!("not an invalid request");
        };
        assert_eq!(
            message,
            ConfigError::UnknownAgentType("other".into()).to_string()
        );
    }
}

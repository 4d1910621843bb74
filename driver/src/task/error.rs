//! Errors of task operations and the gRPC statuses Nomad acts on.

use prost::Message;
use tonic::{Code, Status};

use crate::config::DecodeError;
use crate::container::{CliError, FailureKind};
use crate::proto::structs::RecoverableError;

/// Type URL Nomad's client checks in the first status detail.
const RECOVERABLE_TYPE_URL: &str =
    "type.googleapis.com/hashicorp.nomad.plugins.shared.structs.RecoverableError";

/// Failure of a task operation.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("invalid task config: {0}")]
    InvalidConfig(#[from] DecodeError),

    #[error("invalid task: {0}")]
    InvalidTask(String),

    #[error("task {0} is not known to this plugin")]
    NotFound(String),

    #[error("task {0} is already running")]
    AlreadyStarted(String),

    #[error(
        "container name {name} is taken by a running container that this task does not own; stop or delete it"
    )]
    NameTaken { name: String },

    #[error(transparent)]
    Cli(#[from] CliError),

    #[error("container {container} did not start: {reason}")]
    NotStarted { container: String, reason: String },

    #[error("failed to publish port {label:?} on {addr}")]
    Publish {
        label: String,
        addr: std::net::SocketAddr,
        #[source]
        source: styx_proxy::server::BindError,
    },

    #[error("no bind address for published ports: {0}")]
    BindAddress(String),

    #[error("failed to prepare task state in {path}")]
    State {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid task handle: {0}")]
    InvalidHandle(String),

    #[error("task {0} is running; stop it first or destroy with force")]
    StillRunning(String),

    #[error("exec in task {0} timed out")]
    ExecTimedOut(String),
}

impl TaskError {
    /// Returns true when Nomad should retry the start under the task's restart policy.
    pub fn is_recoverable(&self) -> bool {
        match self {
            Self::Cli(error) => error.is_transient(),
            Self::NotStarted { .. } | Self::Publish { .. } | Self::BindAddress(_) => true,
            _ => false,
        }
    }

    /// Returns the `result` label of a failed start, one of
    /// [`crate::metrics::START_RESULTS`].
    pub fn start_result(&self) -> &'static str {
        match self {
            Self::InvalidConfig(_) | Self::InvalidTask(_) => "invalid_config",
            Self::AlreadyStarted(_) => "already_started",
            Self::NameTaken { .. } => "name_taken",
            Self::Cli(error) if error.kind() == FailureKind::ImageMissing => "image_missing",
            Self::Cli(_) => "cli_error",
            Self::NotStarted { .. } => "not_started",
            Self::Publish { .. } => "publish_failed",
            Self::BindAddress(_) => "no_bind_address",
            Self::State { .. } => "state_error",
            Self::NotFound(_)
            | Self::InvalidHandle(_)
            | Self::StillRunning(_)
            | Self::ExecTimedOut(_) => "other",
        }
    }

    /// Converts to the status Nomad's client expects. A recoverable error carries a
    /// `RecoverableError` detail, without which Nomad fails the task for good.
    pub fn into_status(self) -> Status {
        let message = error_chain(&self);
        if self.is_recoverable() {
            return recoverable_status(message);
        }

        let code = match &self {
            Self::InvalidConfig(_) | Self::InvalidTask(_) | Self::InvalidHandle(_) => {
                Code::InvalidArgument
            }
            Self::NotFound(_) => Code::NotFound,
            Self::AlreadyStarted(_) | Self::NameTaken { .. } | Self::StillRunning(_) => {
                Code::FailedPrecondition
            }
            Self::Cli(error) if error.kind() == FailureKind::ImageMissing => Code::NotFound,
            Self::ExecTimedOut(_) => Code::DeadlineExceeded,
            _ => Code::Internal,
        };
        Status::new(code, message)
    }
}

/// Joins an error and its sources into one line.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// `google.rpc.Status`, the payload of the `grpc-status-details-bin` trailer.
#[derive(Clone, PartialEq, Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

fn recoverable_status(message: String) -> Status {
    let detail = prost_types::Any {
        type_url: RECOVERABLE_TYPE_URL.to_owned(),
        value: RecoverableError { recoverable: true }.encode_to_vec(),
    };
    let status = RpcStatus {
        code: Code::FailedPrecondition as i32,
        message: message.clone(),
        details: vec![detail],
    };
    Status::with_details(
        Code::FailedPrecondition,
        message,
        status.encode_to_vec().into(),
    )
}

/// Returns true when `status` carries Nomad's recoverable detail; used by tests.
pub fn status_is_recoverable(status: &Status) -> bool {
    let Ok(decoded) = RpcStatus::decode(status.details()) else {
        return false;
    };
    decoded.details.first().is_some_and(|detail| {
        detail.type_url == RECOVERABLE_TYPE_URL
            && RecoverableError::decode(detail.value.as_slice())
                .is_ok_and(|error| error.recoverable)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recoverable_error_has_detail() {
        let status = TaskError::BindAddress("no Tailscale address".into()).into_status();

        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(status_is_recoverable(&status));
    }

    #[test]
    fn fatal_error_has_no_detail() {
        let status = TaskError::NameTaken { name: "web".into() }.into_status();

        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(!status_is_recoverable(&status));
    }
}

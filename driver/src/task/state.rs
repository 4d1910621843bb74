//! The driver state inside Nomad's task handle: what RecoverTask needs to find the task
//! again in a new plugin process. Stored as JSON, kept small because Nomad persists it
//! in its client state database.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::TaskError;
use super::spec::PortBinding;

/// Version of the driver state layout in `TaskHandle.version`; Nomad reserves 0.
pub const HANDLE_VERSION: i32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriverState {
    /// Container ID (its name).
    pub container: String,
    /// Directory with the supervisor's PID and exit files.
    pub state_dir: PathBuf,
    /// Unix seconds when the task started.
    pub started_at: u64,
    pub ports: Vec<PortBinding>,
    /// Memory limit in bytes, to judge whether an exit by SIGKILL was an OOM kill.
    pub memory_bytes: u64,
}

impl DriverState {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("driver state serializes")
    }

    pub fn decode(version: i32, bytes: &[u8]) -> Result<Self, TaskError> {
        if version != HANDLE_VERSION {
            return Err(TaskError::InvalidHandle(format!(
                "handle version {version} is not {HANDLE_VERSION}; this handle was written by another driver"
            )));
        }
        serde_json::from_slice(bytes)
            .map_err(|error| TaskError::InvalidHandle(format!("unreadable driver state: {error}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips() {
        let state = DriverState {
            container: "web-1".into(),
            state_dir: "/alloc/web/.styx-driver".into(),
            started_at: 1_786_370_602,
            ports: vec![PortBinding {
                label: "http".into(),
                host_port: 23456,
                container_port: 8080,
            }],
            memory_bytes: 300 << 20,
        };
        assert_eq!(DriverState::decode(1, &state.encode()).unwrap(), state);
    }

    #[test]
    fn other_version_rejected() {
        let error = DriverState::decode(0, b"{}").unwrap_err();
        assert!(error.to_string().contains("version 0"), "{error}");
    }
}

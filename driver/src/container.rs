//! Adapter for Apple's `container` CLI.
//!
//! Each operation has a pure function that builds its argument vector, so the exact
//! command lines are unit-tested, and one async method that runs the CLI. Every run has
//! a time limit, a null stdin, captured output, and `kill_on_drop`, so a hung CLI never
//! outlives the call that started it. Commands are always run as argv, never through a
//! shell.
//!
//! For now this covers what fingerprinting needs: the version probe and the system
//! service status. Task lifecycle commands come with the task lifecycle.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::process::Command;

/// Error for one `container` CLI run. Each variant carries the command line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("container CLI not found at {}", path.display())]
    NotFound { path: PathBuf },

    #[error("failed to run {command}: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },

    #[error("{command} timed out after {timeout:?}")]
    TimedOut { command: String, timeout: Duration },

    #[error("{command} failed with {status}: {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },

    #[error("{command} printed unexpected output {output:?}")]
    UnexpectedOutput { command: String, output: String },
}

/// State of the `container` system service (the apiserver), from `container system status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SystemStatus {
    Running,
    /// Not running; the CLI's own explanation, such as "apiserver is not running".
    NotRunning {
        message: String,
    },
}

/// Handle on one `container` binary with a time limit for each call.
#[derive(Debug, Clone)]
pub struct ContainerCli {
    path: PathBuf,
    timeout: Duration,
}

impl ContainerCli {
    pub fn new(path: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            path: path.into(),
            timeout,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `container --version` and returns the version number, such as `1.2.2`.
    pub async fn version(&self) -> Result<String, CliError> {
        let args = version_args();
        let output = self.run(&args).await?;
        if !output.status.success() {
            return Err(self.failed(&args, &output));
        }

        let stdout = String::from_utf8_lossy(&output.stdout);
        parse_version(&stdout).ok_or_else(|| CliError::UnexpectedOutput {
            command: self.command_line(&args),
            output: stdout.trim().to_owned(),
        })
    }

    /// Runs `container system status`. Exit status 0 means running, 1 means not running
    /// with the reason on stdout; anything else is an error.
    pub async fn system_status(&self) -> Result<SystemStatus, CliError> {
        let args = system_status_args();
        let output = self.run(&args).await?;

        match output.status.code() {
            Some(0) => Ok(SystemStatus::Running),
            Some(1) => Ok(SystemStatus::NotRunning {
                message: first_line(&output.stdout)
                    .or_else(|| first_line(&output.stderr))
                    .unwrap_or_else(|| "no reason given".to_owned()),
            }),
            _ => Err(self.failed(&args, &output)),
        }
    }

    async fn run(&self, args: &[OsString]) -> Result<Output, CliError> {
        let mut command = Command::new(&self.path);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);

        let child = command.spawn().map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => CliError::NotFound {
                path: self.path.clone(),
            },
            _ => CliError::Spawn {
                command: self.command_line(args),
                source,
            },
        })?;

        // Dropping the future on timeout drops the child, which kill_on_drop kills.
        match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(source)) => Err(CliError::Spawn {
                command: self.command_line(args),
                source,
            }),
            Err(_) => Err(CliError::TimedOut {
                command: self.command_line(args),
                timeout: self.timeout,
            }),
        }
    }

    fn failed(&self, args: &[OsString], output: &Output) -> CliError {
        CliError::Failed {
            command: self.command_line(args),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        }
    }

    /// Renders the command for messages only; it is never run through a shell.
    fn command_line(&self, args: &[OsString]) -> String {
        let mut line = self.path.display().to_string();
        for arg in args {
            line.push(' ');
            line.push_str(&arg.to_string_lossy());
        }
        line
    }
}

pub fn version_args() -> Vec<OsString> {
    vec!["--version".into()]
}

pub fn system_status_args() -> Vec<OsString> {
    vec!["system".into(), "status".into()]
}

/// Extracts the version from `container --version` output, which reads
/// `container CLI version 1.2.2 (build: release, commit: 0190097)` in 1.x.
pub fn parse_version(stdout: &str) -> Option<String> {
    let (_, rest) = stdout.split_once("version ")?;
    let version = rest.split_whitespace().next()?;
    version
        .starts_with(|c: char| c.is_ascii_digit())
        .then(|| version.to_owned())
}

fn first_line(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    text.lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_of_probes() {
        assert_eq!(version_args(), ["--version"]);
        assert_eq!(system_status_args(), ["system", "status"]);
    }

    #[test]
    fn version_parses_cli_output() {
        let output = "container CLI version 1.2.2 (build: release, commit: 0190097)\n";
        assert_eq!(parse_version(output).as_deref(), Some("1.2.2"));
    }

    #[test]
    fn version_rejects_other_output() {
        assert_eq!(parse_version("Usage: container [--debug]"), None);
        assert_eq!(parse_version("container CLI version unknown"), None);
    }

    #[tokio::test]
    async fn missing_binary_is_not_found() {
        let cli = ContainerCli::new("/nonexistent/container", Duration::from_secs(5));
        let error = cli.version().await.unwrap_err();
        assert!(matches!(error, CliError::NotFound { .. }), "{error}");
    }
}

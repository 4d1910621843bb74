//! Adapter for Apple's `container` CLI.
//!
//! Each operation has a pure function that builds its argument vector, so the exact
//! command lines are unit-tested, and one async method that runs the CLI. Every run has
//! a time limit, a null stdin, captured output, and `kill_on_drop`, so a hung CLI never
//! outlives the call that started it. Commands are always run as argv, never through a
//! shell. Every run other than the interactive ones (`exec -it`, `start --attach`)
//! counts in the CLI metrics of [`crate::metrics`].
//!
//! Layout:
//! - [`args`]: the pure argv builders.
//! - [`json`]: parsers for the JSON layouts of CLI 0.1 to 1.4.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use tokio::process::Command;

use crate::metrics;

pub mod args;
pub mod json;

pub use args::{CreateSpec, MountArg};
pub use json::{ContainerRecord, ContainerState, ContainerStats, JsonError};

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

    #[error("failed to parse the output of {command}")]
    Parse {
        command: String,
        #[source]
        source: JsonError,
    },
}

/// Cause of a failed CLI run, read from the CLI's `Error: ` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The container does not exist.
    NotFound,
    /// A container with that name exists already.
    AlreadyExists,
    /// The `container` system service is not running (`XPC connection error`).
    ServiceDown,
    /// The registry has no such image, or denies access to it.
    ImageMissing,
    /// The container is not running (exec, kill).
    NotRunning,
    Other,
}

impl CliError {
    /// Classifies the failure from the CLI's message. Texts differ between versions, so
    /// this matches the parts that every version since 0.1 prints.
    pub fn kind(&self) -> FailureKind {
        let stderr = match self {
            Self::Failed { stderr, .. } => stderr.as_str(),
            Self::NotFound { .. } => return FailureKind::ServiceDown,
            _ => return FailureKind::Other,
        };

        if stderr.contains("XPC connection error") {
            FailureKind::ServiceDown
        } else if stderr.contains("already exists") {
            FailureKind::AlreadyExists
        } else if stderr.contains("image not found")
            || stderr.contains("401 Unauthorized")
            || stderr.contains("404 Not Found")
        {
            FailureKind::ImageMissing
        } else if stderr.contains("not found") || stderr.contains("no such container") {
            FailureKind::NotFound
        } else if stderr.contains("is not running") || stderr.contains("container is stopped") {
            FailureKind::NotRunning
        } else {
            FailureKind::Other
        }
    }

    /// Returns true when a later retry may succeed. The service may come back, and a
    /// timed-out run may have hit a slow moment.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::TimedOut { .. } | Self::Spawn { .. })
            || self.kind() == FailureKind::ServiceDown
    }
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

    /// Runs `container create` and returns the ID it prints. `timeout` replaces the
    /// usual limit, because create pulls a missing image first.
    pub async fn create(&self, spec: &CreateSpec, timeout: Duration) -> Result<String, CliError> {
        let args = args::create_args(spec);
        let output = self.run_checked_within(&args, timeout).await?;
        first_line(&output.stdout).ok_or_else(|| CliError::UnexpectedOutput {
            command: self.command_line(&args),
            output: String::new(),
        })
    }

    /// Runs `container inspect`; `Ok(None)` when the container does not exist.
    pub async fn inspect(&self, id: &str) -> Result<Option<ContainerRecord>, CliError> {
        let args = args::inspect_args(id);
        let output = match self.run_checked(&args).await {
            Ok(output) => output,
            Err(error) if error.kind() == FailureKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
        };

        // Before 1.0, inspect printed `[]` for a missing container.
        let records = self.parse(&args, &output, json::parse_containers)?;
        Ok(records.into_iter().find(|record| record.id == id))
    }

    /// Runs `container stop`, which blocks until the container has stopped.
    pub async fn stop(
        &self,
        id: &str,
        timeout: Duration,
        signal: Option<&str>,
    ) -> Result<(), CliError> {
        let args = args::stop_args(id, timeout, signal);
        // The CLI waits `timeout` before it kills, so this call gets that long on top.
        self.run_checked_within(&args, self.timeout + timeout)
            .await
            .map(drop)
    }

    pub async fn kill(&self, id: &str, signal: &str) -> Result<(), CliError> {
        self.run_checked(&args::kill_args(id, signal))
            .await
            .map(drop)
    }

    pub async fn delete(&self, id: &str, force: bool) -> Result<(), CliError> {
        self.run_checked(&args::delete_args(id, force))
            .await
            .map(drop)
    }

    /// Runs `container stats` for one container; `Ok(None)` when it is not running.
    pub async fn stats(&self, id: &str) -> Result<Option<ContainerStats>, CliError> {
        let args = args::stats_args(id);
        let output = self.run_checked(&args).await?;
        let stats = self.parse(&args, &output, json::parse_stats)?;
        Ok(stats.into_iter().find(|stats| stats.id == id))
    }

    /// Runs `container exec` in the foreground and returns its exit status and output,
    /// whatever the status; `timeout` bounds the whole run.
    pub async fn exec(
        &self,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<Output, CliError> {
        self.run_within(&args::exec_args(id, command), timeout)
            .await
    }

    /// Returns the command of an interactive `container exec`, for a caller that
    /// streams its stdin and output.
    pub fn exec_interactive_command(&self, id: &str, command: &[String], tty: bool) -> Command {
        let mut process = Command::new(&self.path);
        process.args(args::exec_interactive_args(id, command, tty));
        process
    }

    /// Returns the command line of `container start --attach`, for the supervisor that
    /// runs it. It is built here so the same argv is used and tested everywhere.
    pub fn start_attached_command(&self, id: &str) -> std::process::Command {
        let mut command = std::process::Command::new(&self.path);
        command.args(args::start_attached_args(id));
        command
    }

    async fn run_checked(&self, args: &[OsString]) -> Result<Output, CliError> {
        self.run_checked_within(args, self.timeout).await
    }

    async fn run_checked_within(
        &self,
        args: &[OsString],
        timeout: Duration,
    ) -> Result<Output, CliError> {
        let output = self.run_within(args, timeout).await?;
        if output.status.success() {
            Ok(output)
        } else {
            Err(self.failed(args, &output))
        }
    }

    fn parse<T>(
        &self,
        args: &[OsString],
        output: &Output,
        parser: fn(&str) -> Result<T, JsonError>,
    ) -> Result<T, CliError> {
        parser(&String::from_utf8_lossy(&output.stdout)).map_err(|source| CliError::Parse {
            command: self.command_line(args),
            source,
        })
    }

    async fn run(&self, args: &[OsString]) -> Result<Output, CliError> {
        self.run_within(args, self.timeout).await
    }

    /// Runs the CLI once and records the call in the CLI metrics.
    async fn run_within(&self, args: &[OsString], timeout: Duration) -> Result<Output, CliError> {
        let started = Instant::now();
        let result = self.spawn_and_wait(args, timeout).await;
        let label = match &result {
            Ok(output) if output.status.success() => "success",
            Ok(_) => "failed",
            Err(CliError::TimedOut { .. }) => "timeout",
            Err(_) => "spawn_failed",
        };
        metrics::record_cli_call(metrics::cli_command(args), label, started.elapsed());
        result
    }

    async fn spawn_and_wait(
        &self,
        args: &[OsString],
        timeout: Duration,
    ) -> Result<Output, CliError> {
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
        match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(source)) => Err(CliError::Spawn {
                command: self.command_line(args),
                source,
            }),
            Err(_) => Err(CliError::TimedOut {
                command: self.command_line(args),
                timeout,
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

    fn failure(stderr: &str) -> CliError {
        use std::os::unix::process::ExitStatusExt;
        CliError::Failed {
            command: "container".into(),
            status: std::process::ExitStatus::from_raw(1 << 8),
            stderr: stderr.into(),
        }
    }

    #[test]
    fn failures_classified_by_message() {
        let cases = [
            ("Error: container not found: web", FailureKind::NotFound),
            (
                "Error: internalError: \"failed to stop container\" (cause: \"notFound: \"container with ID web not found\"\")",
                FailureKind::NotFound,
            ),
            (
                "Error: get failed: container web not found",
                FailureKind::NotFound,
            ),
            (
                "Error: container with id web already exists",
                FailureKind::AlreadyExists,
            ),
            (
                "Error: container already exists: web",
                FailureKind::AlreadyExists,
            ),
            (
                "Error: interrupted: \"XPC connection error: Connection invalid\"\nEnsure container system service has been started with `container system start`.",
                FailureKind::ServiceDown,
            ),
            (
                "Error: HTTP request to https://registry-1.docker.io/v2/library/nope/manifests/latest failed with response: 401 Unauthorized. Reason: denied",
                FailureKind::ImageMissing,
            ),
            (
                "Error: container web is not running",
                FailureKind::NotRunning,
            ),
            (
                "Error: minimum memory amount allowed is 200 MiB",
                FailureKind::Other,
            ),
        ];
        for (stderr, kind) in cases {
            assert_eq!(failure(stderr).kind(), kind, "{stderr}");
        }
        assert!(
            failure("Error: interrupted: \"XPC connection error: Connection invalid\"")
                .is_transient()
        );
        assert!(!failure("Error: container already exists: web").is_transient());
    }

    #[tokio::test]
    async fn missing_binary_is_not_found() {
        let cli = ContainerCli::new("/nonexistent/container", Duration::from_secs(5));
        let error = cli.version().await.unwrap_err();
        assert!(matches!(error, CliError::NotFound { .. }), "{error}");
    }
}

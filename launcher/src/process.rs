//! External programs (`tailscale`, `launchctl`, `nomad`, `consul`, `vault`, `sw_vers`,
//! `uname`, `container`), located through `PATH` and run by argv with a timeout.
//!
//! No shell ever parses an argument. This module does not interpret output: each caller
//! parses what its program prints.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// Default time limit for one run of an external program.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// Failure to run an external program.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("{program} not found on PATH")]
    NotFound { program: String },
    #[error("failed to start `{argv}`")]
    Spawn {
        argv: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{argv}` timed out after {} s", timeout.as_secs())]
    TimedOut { argv: String, timeout: Duration },
    #[error("failed to read the output of `{argv}`")]
    Read {
        argv: String,
        #[source]
        source: std::io::Error,
    },
}

/// Exit status and captured output of a finished program.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit code, or `None` when a signal ended the program.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Returns the first non-empty line of stderr, or of stdout when stderr is empty, for
    /// error messages.
    pub fn first_message_line(&self) -> &str {
        self.stderr
            .lines()
            .chain(self.stdout.lines())
            .map(str::trim)
            .find(|line| !line.is_empty())
            .unwrap_or("")
    }
}

/// Searches `PATH` for an executable file named `program`.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;

    std::fs::metadata(path)
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// One invocation of an external program: argv, extra environment and a timeout.
#[derive(Debug, Clone)]
pub struct Invocation {
    program: String,
    args: Vec<OsString>,
    envs: Vec<(String, OsString)>,
    timeout: Duration,
}

impl Invocation {
    pub fn new(program: &str) -> Self {
        Self {
            program: program.to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: &str, value: impl Into<OsString>) -> Self {
        self.envs.push((key.to_owned(), value.into()));
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Renders the argv for messages, with the program name as found on `PATH`.
    pub fn display_argv(&self) -> String {
        let mut parts = vec![self.program.clone()];
        parts.extend(
            self.args
                .iter()
                .map(|arg| arg.to_string_lossy().into_owned()),
        );
        parts.join(" ")
    }

    /// Runs the program to completion with stdin closed, capturing stdout and stderr.
    ///
    /// A non-zero exit is not an error here: callers decide what each exit code means.
    ///
    /// # Errors
    ///
    /// The program is not on `PATH`, cannot be started, outlives the timeout (it is then
    /// killed), or its output cannot be read.
    pub async fn run(&self) -> Result<Output, ProcessError> {
        let path = find_program(&self.program).ok_or_else(|| ProcessError::NotFound {
            program: self.program.clone(),
        })?;
        let argv = self.display_argv();

        let mut command = Command::new(&path);
        command
            .args(&self.args)
            .envs(self.envs.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|source| ProcessError::Spawn {
            argv: argv.clone(),
            source,
        })?;

        let mut stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let collect = async {
            let mut out = Vec::new();
            let mut err = Vec::new();
            let (read_out, read_err) =
                tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
            read_out.and(read_err)?;
            let status = child.wait().await?;
            Ok::<_, std::io::Error>((status, out, err))
        };

        let (status, out, err) = match tokio::time::timeout(self.timeout, collect).await {
            Ok(result) => result.map_err(|source| ProcessError::Read {
                argv: argv.clone(),
                source,
            })?,
            Err(_) => {
                return Err(ProcessError::TimedOut {
                    argv,
                    timeout: self.timeout,
                });
            }
        };

        Ok(Output {
            code: status.code(),
            stdout: String::from_utf8_lossy(&out).into_owned(),
            stderr: String::from_utf8_lossy(&err).into_owned(),
        })
    }
}

//! The task supervisor: a small process of the driver's own binary that runs
//! `container start --attach` for one task, copies its stdout and stderr into Nomad's
//! log FIFOs, and records the container's exit status in a file.
//!
//! The CLI has no `wait` command and no exit code in `inspect`, so only the foreground
//! `start --attach` learns a container's exit code, and it is also the only source of
//! separate stdout and stderr. The supervisor runs in its own session (`setsid`) so that
//! neither a plugin crash nor a plugin restart ends it. The FIFOs stay open in the
//! supervisor the whole time, so the logs continue across plugin restarts with no gap
//! and no replayed history, and a recovered plugin only has to read the status file.
//!
//! Files in the task's state directory:
//! - `supervisor.pid`: the supervisor's PID, written first.
//! - `exit`: the container's exit status, written once `start --attach` exits on its
//!   own. It is absent when the CLI was killed, because its status then carries no
//!   information about the container.
//! - `supervisor.log`: the supervisor's own errors.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

/// First argument that selects supervisor mode.
pub const SUBCOMMAND: &str = "supervise";

pub const PID_FILE: &str = "supervisor.pid";
pub const EXIT_FILE: &str = "exit";
pub const LOG_FILE: &str = "supervisor.log";

/// How long the supervisor waits for its output copiers after the container exits.
const COPY_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Command line of one supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupervisorArgs {
    pub container_path: PathBuf,
    pub container_id: String,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
    pub state_dir: PathBuf,
}

impl SupervisorArgs {
    /// Builds the argv after the program name.
    pub fn to_args(&self) -> Vec<OsString> {
        vec![
            SUBCOMMAND.into(),
            "--container".into(),
            self.container_path.clone().into(),
            "--id".into(),
            (&self.container_id).into(),
            "--stdout".into(),
            self.stdout_path.clone().into(),
            "--stderr".into(),
            self.stderr_path.clone().into(),
            "--state".into(),
            self.state_dir.clone().into(),
        ]
    }

    /// Parses the argv after the subcommand.
    pub fn parse(args: &[OsString]) -> Result<Self, String> {
        let mut values: [Option<&OsStr>; 5] = [None; 5];
        let names = ["--container", "--id", "--stdout", "--stderr", "--state"];
        let mut pairs = args.chunks(2);
        for pair in &mut pairs {
            let [flag, value] = pair else {
                return Err(format!("missing value after {:?}", pair[0]));
            };
            let index = names
                .iter()
                .position(|name| flag == *name)
                .ok_or_else(|| format!("unknown option {flag:?}"))?;
            values[index] = Some(value);
        }

        let take = |index: usize| {
            values[index]
                .map(OsStr::to_owned)
                .ok_or_else(|| format!("missing option {}", names[index]))
        };
        Ok(Self {
            container_path: take(0)?.into(),
            container_id: take(1)?.to_string_lossy().into_owned(),
            stdout_path: take(2)?.into(),
            stderr_path: take(3)?.into(),
            state_dir: take(4)?.into(),
        })
    }
}

/// Runs the supervisor and returns its exit status; the container's status goes to the
/// exit file, not here.
pub fn main(args: &[OsString]) -> ExitCode {
    let args = match SupervisorArgs::parse(args) {
        Ok(args) => args,
        Err(message) => {
            let _ = writeln!(io::stderr(), "styx-driver supervise: {message}");
            return ExitCode::from(64);
        }
    };

    // A new session, so signals to the plugin's process group do not reach us. setsid
    // fails only for a process group leader, and the plugin spawns us without a group
    // of our own.
    let _ = rustix::process::setsid();

    match supervise(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let line = format!(
                "failed to supervise container {}: {error}\n",
                args.container_id
            );
            let _ = File::options()
                .create(true)
                .append(true)
                .open(args.state_dir.join(LOG_FILE))
                .and_then(|mut log| log.write_all(line.as_bytes()));
            ExitCode::FAILURE
        }
    }
}

fn supervise(args: &SupervisorArgs) -> io::Result<()> {
    write_atomic(
        &args.state_dir.join(PID_FILE),
        std::process::id().to_string(),
    )?;

    let mut child = Command::new(&args.container_path)
        .args(crate::container::args::start_attached_args(
            &args.container_id,
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");

    // Opening a FIFO for writing blocks until logmon has it open for reading, so each
    // stream opens in its own thread.
    let (done_sender, done) = std::sync::mpsc::channel();
    spawn_copier(stdout, args.stdout_path.clone(), done_sender.clone());
    spawn_copier(stderr, args.stderr_path.clone(), done_sender);
    let status = child.wait()?;

    // The copiers finish once they have written the last output. One stuck opening a
    // FIFO without a reader must not keep the exit from being recorded.
    let deadline = std::time::Instant::now() + COPY_DRAIN_TIMEOUT;
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if done.recv_timeout(left).is_err() {
            break;
        }
    }

    if let Some(code) = status.code() {
        write_atomic(&args.state_dir.join(EXIT_FILE), code.to_string())?;
    }
    Ok(())
}

/// Copies `source` into the FIFO at `path` until end of file, then reports on `done`.
///
/// NOTE: opening the FIFO blocks until logmon reads it. Without a reader the container's
/// output pipe fills up and its writes block, as they would with Nomad's own drivers.
fn spawn_copier(
    mut source: impl Read + Send + 'static,
    path: PathBuf,
    done: std::sync::mpsc::Sender<()>,
) {
    std::thread::spawn(move || {
        let mut sink = File::options().write(true).open(&path).ok();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let read = match source.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(read) => read,
            };
            // Once logmon is gone, later output is dropped rather than blocking the
            // container on a full pipe.
            if let Some(file) = &mut sink
                && file.write_all(&buffer[..read]).is_err()
            {
                sink = None;
            }
        }
        let _ = done.send(());
    });
}

/// Reads the exit file: `Some(code)` once the container has exited under supervision.
pub fn read_exit_code(state_dir: &Path) -> Option<i32> {
    fs::read_to_string(state_dir.join(EXIT_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Reads the supervisor's PID.
pub fn read_pid(state_dir: &Path) -> Option<i32> {
    fs::read_to_string(state_dir.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Returns true while a process with `pid` exists.
///
/// NOTE: a PID reused by another process after the supervisor died reads as alive, so
/// the exit is then noticed only when that process ends too. The supervisor's start
/// time (from the process table) would rule this out.
pub fn process_alive(pid: i32) -> bool {
    rustix::process::Pid::from_raw(pid)
        .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok())
}

pub fn write_atomic(path: &Path, contents: impl AsRef<[u8]>) -> io::Result<()> {
    let mut staging = path.as_os_str().to_owned();
    staging.push(".partial");
    fs::write(&staging, contents)?;
    fs::rename(&staging, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_round_trip() {
        let args = SupervisorArgs {
            container_path: "/usr/local/bin/container".into(),
            container_id: "web-7f3c2a1b".into(),
            stdout_path: "/alloc/logs/.web.stdout.fifo".into(),
            stderr_path: "/alloc/logs/.web.stderr.fifo".into(),
            state_dir: "/alloc/web/.styx".into(),
        };
        let argv = args.to_args();

        assert_eq!(argv[0], SUBCOMMAND);
        assert_eq!(SupervisorArgs::parse(&argv[1..]).unwrap(), args);
    }

    #[test]
    fn parse_rejects_missing_option() {
        let argv: Vec<OsString> = vec!["--id".into(), "web".into()];
        let error = SupervisorArgs::parse(&argv).unwrap_err();
        assert_eq!(error, "missing option --container");
    }
}

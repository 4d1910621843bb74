//! The styx-proxy child process a benchmark measures: start, wait until ready, stop.
//!
//! Each engine runs in its own `styx-proxy run` child, so the CPU time and memory read
//! from its PID are the proxy's alone. A child is stopped with SIGTERM and killed after
//! [`STOP_TIMEOUT`], on success, on error (through `Drop`) and on Ctrl-C or SIGTERM
//! (through the handler that [`install_interrupt_handler`] sets).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::BenchError;

/// Bound on waiting for a new child to accept connections.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Bound on a graceful stop before the child is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Connection limit passed to every child; above the idle scenario's 2,000 connections.
const MAX_CONNECTIONS: &str = "100000";

/// Bytes of the child's stderr quoted when it exits early.
const STDERR_TAIL_BYTES: u64 = 4096;

/// PIDs of the children alive now, for the Ctrl-C handler. A child's PID stays in this
/// list until it has been waited for, so the PID cannot have been reused when the
/// handler signals it.
static LIVE_CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Set once the interrupt handler runs.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Forwarding engine of a styx-proxy child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Engine {
    Splice,
    Copy,
}

impl Engine {
    /// Value of the child's `--engine` flag.
    pub const fn flag_value(self) -> &'static str {
        match self {
            Engine::Splice => "splice",
            Engine::Copy => "copy",
        }
    }

    /// Path name in the report.
    pub const fn path_name(self) -> &'static str {
        match self {
            Engine::Splice => "styx-splice",
            Engine::Copy => "styx-copy",
        }
    }
}

/// A running `styx-proxy run` child.
#[derive(Debug)]
pub struct ProxyChild {
    engine: Engine,
    listen: SocketAddr,
    child: Option<Child>,
    stderr_log: File,
}

impl ProxyChild {
    /// Starts `proxy_exe run` with `engine`, forwarding a free loopback port to
    /// `upstream`, and waits until the port accepts connections.
    ///
    /// # Errors
    /// Returns an error when the child cannot start, exits early (its stderr is quoted)
    /// or does not accept connections within [`READY_TIMEOUT`].
    pub fn start(
        proxy_exe: &Path,
        engine: Engine,
        upstream: SocketAddr,
    ) -> Result<ProxyChild, BenchError> {
        let process_error = |source| BenchError::ProxyProcess {
            engine: engine.path_name(),
            source,
        };

        let listen = pick_free_loopback_port().map_err(process_error)?;
        let stderr_log = tempfile::tempfile().map_err(process_error)?;
        let stderr = stderr_log.try_clone().map_err(process_error)?;

        let child = Command::new(proxy_exe)
            .args(proxy_argv(engine, listen, upstream))
            // Plain log lines, so the stderr quoted on an early exit has no colour codes.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|source| BenchError::SpawnProxy {
                exe: proxy_exe.to_path_buf(),
                source,
            })?;
        register_child(child.id());

        let mut proxy = ProxyChild {
            engine,
            listen,
            child: Some(child),
            stderr_log,
        };
        proxy.wait_until_ready()?;
        tracing::info!(engine = engine.flag_value(), listen = %listen, pid = proxy.pid(), "styx-proxy child ready");
        Ok(proxy)
    }

    /// Address the child listens on.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// PID of the child.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Stops the child with SIGTERM, then kills it if it has not exited after
    /// [`STOP_TIMEOUT`].
    ///
    /// # Errors
    /// Returns [`BenchError::ProxyProcess`] when signalling or waiting fails.
    pub fn stop(mut self) -> Result<(), BenchError> {
        self.terminate()
    }

    fn wait_until_ready(&mut self) -> Result<(), BenchError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.try_wait()? {
                self.child = None;
                return Err(BenchError::ProxyExited {
                    engine: self.engine.path_name(),
                    status,
                    stderr: self.stderr_tail(),
                });
            }
            if TcpStream::connect_timeout(&self.listen, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(BenchError::ProxyNotReady {
                    engine: self.engine.path_name(),
                    addr: self.listen,
                    timeout: READY_TIMEOUT,
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn try_wait(&mut self) -> Result<Option<std::process::ExitStatus>, BenchError> {
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        let status = child
            .try_wait()
            .map_err(|source| BenchError::ProxyProcess {
                engine: self.engine.path_name(),
                source,
            })?;
        if status.is_some() {
            unregister_child(child.id());
        }
        Ok(status)
    }

    fn terminate(&mut self) -> Result<(), BenchError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = child.id();
        let process_error = |source| BenchError::ProxyProcess {
            engine: self.engine.path_name(),
            source,
        };

        send_signal(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        let result = loop {
            match child.try_wait() {
                Ok(Some(_)) => break Ok(()),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Ok(None) => {
                    tracing::warn!(pid, "styx-proxy child ignored SIGTERM; killing it");
                    let killed = child.kill().and_then(|()| child.wait().map(drop));
                    break killed.map_err(process_error);
                }
                Err(source) => break Err(process_error(source)),
            }
        };
        unregister_child(pid);
        result
    }

    fn stderr_tail(&mut self) -> String {
        let mut tail = String::new();
        let length = self.stderr_log.seek(SeekFrom::End(0)).unwrap_or(0);
        let start = length.saturating_sub(STDERR_TAIL_BYTES);
        if self.stderr_log.seek(SeekFrom::Start(start)).is_ok() {
            let mut bytes = Vec::new();
            let _ = self.stderr_log.read_to_end(&mut bytes);
            tail = String::from_utf8_lossy(&bytes).trim_end().to_owned();
        }
        tail
    }
}

impl Drop for ProxyChild {
    fn drop(&mut self) {
        if let Err(error) = self.terminate() {
            tracing::warn!(%error, "failed to stop a styx-proxy child");
        }
    }
}

/// Arguments of `styx-proxy run` for one child.
pub fn proxy_argv(engine: Engine, listen: SocketAddr, upstream: SocketAddr) -> Vec<String> {
    vec![
        "run".to_owned(),
        "--listen".to_owned(),
        listen.to_string(),
        "--upstream".to_owned(),
        upstream.to_string(),
        "--engine".to_owned(),
        engine.flag_value().to_owned(),
        "--max-connections".to_owned(),
        MAX_CONNECTIONS.to_owned(),
    ]
}

/// Binds port 0 on 127.0.0.1 and releases it.
///
/// NOTE: another process may take the port between the release and the child's bind. The
/// child then exits with an address-in-use error, which [`ProxyChild::start`] reports.
fn pick_free_loopback_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

fn send_signal(pid: u32, signal: rustix::process::Signal) {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    // An error means the child has exited already, which the caller's wait observes.
    let _ = rustix::process::kill_process(pid, signal);
}

fn register_child(pid: u32) {
    LIVE_CHILDREN
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .push(pid);
}

fn unregister_child(pid: u32) {
    LIVE_CHILDREN
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .retain(|&live| live != pid);
}

/// Sets a handler for Ctrl-C (SIGINT), SIGTERM and SIGHUP that stops every live child,
/// then exits with status 130. Only the first call in a process sets it; later calls do nothing.
///
/// The main thread may see a child vanish before the handler exits; it checks
/// [`interrupted`] to report the interrupt rather than the failure it caused.
pub fn install_interrupt_handler() {
    let result = ctrlc::set_handler(|| {
        INTERRUPTED.store(true, Ordering::SeqCst);
        let pids = live_children();
        for &pid in &pids {
            send_signal(pid, rustix::process::Signal::TERM);
        }
        if !pids.is_empty() {
            thread::sleep(Duration::from_secs(1));
        }

        // Read the list again: children the main thread has waited for meanwhile are gone
        // from it, so no PID here can have been reused.
        for pid in live_children() {
            send_signal(pid, rustix::process::Signal::KILL);
        }
        eprintln!(
            "styx-proxy bench: interrupted; stopped {} styx-proxy children",
            pids.len()
        );
        std::process::exit(130);
    });
    if let Err(error) = result {
        tracing::debug!(%error, "interrupt handler not installed");
    }
}

/// Returns whether the interrupt handler has run.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn live_children() -> Vec<u32> {
    LIVE_CHILDREN
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_names_every_flag() {
        let listen: SocketAddr = "127.0.0.1:18080".parse().unwrap();
        let upstream: SocketAddr = "127.0.0.1:19000".parse().unwrap();
        let argv = proxy_argv(Engine::Splice, listen, upstream);
        assert_eq!(
            argv,
            [
                "run",
                "--listen",
                "127.0.0.1:18080",
                "--upstream",
                "127.0.0.1:19000",
                "--engine",
                "splice",
                "--max-connections",
                "100000",
            ]
        );
    }

    #[test]
    fn missing_exe_is_spawn_error() {
        let upstream: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let error = ProxyChild::start(Path::new("/nonexistent/styx-proxy"), Engine::Copy, upstream)
            .expect_err("a missing executable cannot start");
        assert!(matches!(error, BenchError::SpawnProxy { .. }), "{error:?}");
    }

    #[test]
    fn early_exit_quotes_stderr() {
        use std::os::unix::fs::PermissionsExt;

        let directory = tempfile::tempdir().expect("temp dir");
        let script = directory.path().join("failing-proxy");
        std::fs::write(
            &script,
            "#!/bin/sh\necho 'bind failed: address in use' >&2\nexit 3\n",
        )
        .expect("write script");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).expect("chmod");

        let upstream: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let error = ProxyChild::start(&script, Engine::Copy, upstream)
            .expect_err("a child that exits cannot become ready");
        let BenchError::ProxyExited { engine, stderr, .. } = &error else {
            panic!("expected ProxyExited, got {error:?}");
        };
        assert_eq!(*engine, "styx-copy");
        assert_eq!(stderr, "bind failed: address in use");
    }
}

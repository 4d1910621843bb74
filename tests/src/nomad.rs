//! The Nomad client's side of the plugin protocol, for tests.
//!
//! [`Plugin::start`] launches the plugin binary with Nomad's environment (magic cookie,
//! protocol versions). It reads the first stdout line as the go-plugin handshake and
//! checks it as go-plugin's client does. Then it dials the unix socket with gRPC over
//! cleartext HTTP/2. The stderr lines, and any stdout lines after the handshake, are
//! collected for inspection. go-plugin's client discards such stdout lines.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::{Child, ChildStdout, Command};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic_health::pb::health_client::HealthClient;

use styx_driver::handshake::{MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE, PROTOCOL_VERSIONS_KEY};
use styx_driver::proto::base::base_plugin_client::BasePluginClient;
use styx_driver::proto::drivers::driver_client::DriverClient;
use styx_driver::proto::plugin::grpc_controller_client::GrpcControllerClient;
use styx_driver::socket::{UNIX_SOCKET_DIR_KEY, UNIX_SOCKET_GROUP_KEY};

/// go-plugin's client waits this long for the handshake line.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// Environment variables go-plugin adds for TCP port selection. Nomad sets them even
/// though plugins on unix sockets ignore them.
pub const MIN_PORT_KEY: &str = "PLUGIN_MIN_PORT";
pub const MAX_PORT_KEY: &str = "PLUGIN_MAX_PORT";

/// The parsed handshake line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// The line as printed, without its newline.
    pub line: String,
    pub core_version: u32,
    pub app_version: u32,
    pub network: String,
    pub address: String,
    pub protocol: String,
}

/// Parses a handshake line with go-plugin client's rules: split on `|` after trimming,
/// at least four fields, core version 1, app version 2, network `unix` or `tcp`, and
/// protocol `grpc` (an absent protocol means net/rpc, which Nomad rejects).
pub fn parse_handshake(line: &str) -> anyhow::Result<Handshake> {
    let trimmed = line.trim();
    let fields: Vec<&str> = trimmed.split('|').collect();
    ensure!(
        fields.len() >= 4,
        "Unrecognized remote plugin message: {trimmed:?}"
    );

    let core_version: u32 = fields[0]
        .parse()
        .context("core protocol version is not a number")?;
    ensure!(
        core_version == 1,
        "incompatible core API version with plugin: {core_version}"
    );
    let app_version: u32 = fields[1]
        .parse()
        .context("app protocol version is not a number")?;
    ensure!(
        app_version == 2,
        "incompatible API version with plugin: {app_version}"
    );

    let network = fields[2].to_owned();
    ensure!(
        network == "unix" || network == "tcp",
        "unknown address type {network:?}"
    );
    let protocol = fields.get(4).copied().unwrap_or("netrpc").to_owned();
    ensure!(
        protocol == "grpc",
        "unsupported plugin protocol {protocol:?}"
    );

    Ok(Handshake {
        line: trimmed.to_owned(),
        core_version,
        app_version,
        network,
        address: fields[3].to_owned(),
        protocol,
    })
}

/// How to launch the plugin.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// Value for the magic cookie variable, `None` to leave it unset.
    pub magic_cookie: Option<String>,
    pub protocol_versions: String,
    /// Directory for the unix socket, passed as `PLUGIN_UNIX_SOCKET_DIR`.
    pub socket_dir: Option<PathBuf>,
    /// Group that may use the socket, passed as `PLUGIN_UNIX_SOCKET_GROUP`.
    pub socket_group: Option<String>,
    /// Extra environment variables, such as a log filter.
    pub env: Vec<(String, String)>,
}

impl Default for LaunchOptions {
    /// Nomad's environment for a driver plugin.
    fn default() -> Self {
        Self {
            magic_cookie: Some(MAGIC_COOKIE_VALUE.to_owned()),
            protocol_versions: "2".to_owned(),
            socket_dir: None,
            socket_group: None,
            env: Vec::new(),
        }
    }
}

/// Builds the command Nomad runs for a plugin binary.
pub fn plugin_command(binary: &Path, options: &LaunchOptions) -> Command {
    let mut command = Command::new(binary);
    command
        .env_remove(MAGIC_COOKIE_KEY)
        .env(PROTOCOL_VERSIONS_KEY, &options.protocol_versions)
        .env(MIN_PORT_KEY, "10000")
        .env(MAX_PORT_KEY, "25000")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(cookie) = &options.magic_cookie {
        command.env(MAGIC_COOKIE_KEY, cookie);
    }
    if let Some(dir) = &options.socket_dir {
        command.env(UNIX_SOCKET_DIR_KEY, dir);
    }
    if let Some(group) = &options.socket_group {
        command.env(UNIX_SOCKET_GROUP_KEY, group);
    }
    for (key, value) in &options.env {
        command.env(key, value);
    }
    command
}

/// A running plugin process with a gRPC channel to it.
pub struct Plugin {
    child: Child,
    pub handshake: Handshake,
    pub channel: Channel,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<String>>>,
    stdout_reader: Option<tokio::task::JoinHandle<()>>,
    stderr_reader: Option<tokio::task::JoinHandle<()>>,
}

impl Plugin {
    /// Launches `binary`, waits for the handshake, and connects.
    pub async fn start(binary: &Path, options: &LaunchOptions) -> anyhow::Result<Self> {
        let mut child = plugin_command(binary, options)
            .spawn()
            .with_context(|| format!("failed to start {}", binary.display()))?;
        let stdout = child.stdout.take().context("stdout is piped")?;
        let stderr_pipe = child.stderr.take().context("stderr is piped")?;

        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stderr_reader =
            tokio::spawn(collect_lines(BufReader::new(stderr_pipe), stderr.clone()));

        let stdout_lines = Arc::new(Mutex::new(Vec::new()));
        let (line, stdout_reader) = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            read_handshake(stdout, stdout_lines.clone()),
        )
        .await
        .context("timed out waiting for the handshake line")??;
        let handshake = parse_handshake(&line)?;
        ensure!(
            handshake.network == "unix",
            "expected a unix socket, got {:?}",
            handshake.network
        );

        let channel = connect_unix(Path::new(&handshake.address)).await?;
        Ok(Self {
            child,
            handshake,
            channel,
            stderr,
            stdout: stdout_lines,
            stdout_reader: Some(stdout_reader),
            stderr_reader: Some(stderr_reader),
        })
    }

    pub fn base(&self) -> BasePluginClient<Channel> {
        BasePluginClient::new(self.channel.clone())
    }

    pub fn driver(&self) -> DriverClient<Channel> {
        DriverClient::new(self.channel.clone())
    }

    pub fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel.clone())
    }

    pub fn controller(&self) -> GrpcControllerClient<Channel> {
        GrpcControllerClient::new(self.channel.clone())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn socket_path(&self) -> PathBuf {
        PathBuf::from(&self.handshake.address)
    }

    /// Returns the stderr lines read so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().expect("output lock").clone()
    }

    /// Returns the stdout lines after the handshake line read so far.
    pub fn stdout_lines_after_handshake(&self) -> Vec<String> {
        self.stdout.lock().expect("output lock").clone()
    }

    /// Stops reading stdout and stderr and closes both pipes, as happens when the Nomad
    /// agent that started the plugin exits. Later writes by the plugin get EPIPE.
    pub async fn close_output_pipes(&mut self) {
        for reader in [self.stdout_reader.take(), self.stderr_reader.take()]
            .into_iter()
            .flatten()
        {
            reader.abort();
            let _ = reader.await;
        }
    }

    /// Returns the exit status if the process has exited.
    pub fn try_exit_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => bail!("plugin did not exit within {timeout:?}"),
        }
    }

    /// Waits for both output readers to reach end of file, after the process exited.
    pub async fn drain_output(&mut self) {
        for reader in [self.stdout_reader.take(), self.stderr_reader.take()]
            .into_iter()
            .flatten()
        {
            let _ = reader.await;
        }
    }
}

/// Reads the first stdout line, then keeps reading the rest into `rest` in the
/// background, so the plugin never blocks on a full pipe.
async fn read_handshake(
    stdout: ChildStdout,
    rest: Arc<Mutex<Vec<String>>>,
) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    let read = reader.read_line(&mut line).await?;
    ensure!(read > 0, "plugin exited before we could connect");

    let collector = tokio::spawn(collect_lines(reader, rest));
    Ok((line, collector))
}

async fn collect_lines(pipe: impl AsyncBufRead + Unpin, lines: Arc<Mutex<Vec<String>>>) {
    let mut reader = pipe.lines();
    while let Ok(Some(line)) = reader.next_line().await {
        lines.lock().expect("output lock").push(line);
    }
}

/// Dials a gRPC server on a unix socket. The URI is a placeholder that sets the
/// `:authority` header; go-plugin's client also sends `unused`.
pub async fn connect_unix(path: &Path) -> anyhow::Result<Channel> {
    let path = path.to_owned();
    let channel = Endpoint::from_static("http://unused")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .context("failed to connect to the plugin socket")?;
    Ok(channel)
}

/// Runs the plugin binary without waiting for a handshake and returns its exit status
/// and output, for launches that are expected to fail.
pub async fn run_to_exit(
    binary: &Path,
    options: &LaunchOptions,
    timeout: Duration,
) -> anyhow::Result<std::process::Output> {
    let child = plugin_command(binary, options).spawn()?;
    tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .context("plugin did not exit")?
        .context("failed to wait for the plugin")
}

/// Sends `signal` (such as `-INT`) to `pid` with the `kill` command.
pub fn send_signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill {signal} {pid} failed with {status}");
    Ok(())
}

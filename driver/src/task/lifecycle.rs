//! The operations behind each task RPC.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, mpsc, watch};
use tonic::Status;

use super::exit::{self, send_event, unknown_exit};
use super::publish::{self, Publication};
use super::spec::{self, PortBinding};
use super::state::{DriverState, HANDLE_VERSION};
use super::stats::{CpuSample, task_stats};
use super::{Exit, Task, TaskError, TaskRegistry};
use crate::config::{PluginConfig, TaskConfig as TaskOptions};
use crate::container::{ContainerCli, ContainerState, FailureKind};
use crate::metrics;
use crate::node::NodeCompute;
use crate::proto::drivers::{
    DriverTaskEvent, ExecTaskResponse, ExitResult, InspectTaskResponse, NetworkOverride,
    TaskConfig, TaskDriverStatus, TaskHandle, TaskState, TaskStatsResponse, TaskStatus,
};
use crate::supervisor::{self, SupervisorArgs};

/// Name of the folder in the task directory that contains the supervisor's files.
const STATE_DIR_NAME: &str = ".styx-driver";

/// Name of the env file, deleted once `container create` has read it.
const ENV_FILE_NAME: &str = "env";

/// Capacity of the task event channel; a slow TaskEvents reader loses the oldest.
const EVENT_CAPACITY: usize = 256;

/// How often start polls `inspect` for the container to run.
const START_POLL: Duration = Duration::from_millis(20);

/// How long destroy waits for the supervisor to record the exit after a forced delete.
const DESTROY_EXIT_WAIT: Duration = Duration::from_secs(10);

/// Maximum exec output returned per stream, because Nomad's script checks keep 4 KiB.
const MAX_EXEC_OUTPUT: usize = 4 * 1024;

/// Plugin config and node facts for one operation, read at the time of the call.
#[derive(Debug, Clone)]
pub struct Context {
    pub config: Arc<PluginConfig>,
    pub compute: Option<NodeCompute>,
}

impl Context {
    pub(super) fn cli(&self) -> ContainerCli {
        ContainerCli::new(&self.config.container_path, self.config.command_timeout)
    }
}

/// The task registry and event channel of one plugin process.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    tasks: Arc<TaskRegistry>,
    events: broadcast::Sender<DriverTaskEvent>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        Self {
            tasks: Arc::default(),
            events,
        }
    }
}

/// Start result: the handle Nomad persists and the driver network it advertises.
pub struct Started {
    pub handle: TaskHandle,
    pub network: NetworkOverride,
}

impl Lifecycle {
    pub fn tasks(&self) -> &TaskRegistry {
        &self.tasks
    }

    pub fn subscribe_events(&self) -> broadcast::Receiver<DriverTaskEvent> {
        self.events.subscribe()
    }

    /// Creates and starts the container, its supervisor and its listeners, and counts
    /// the start in the start metrics.
    pub async fn start(&self, context: &Context, config: TaskConfig) -> Result<Started, TaskError> {
        let result = self.create_and_run(context, config).await;
        let label = match &result {
            Ok(_) => "started",
            Err(error) => error.start_result(),
        };
        metrics::record_start(label);
        result
    }

    async fn create_and_run(
        &self,
        context: &Context,
        config: TaskConfig,
    ) -> Result<Started, TaskError> {
        if self.tasks.get(&config.id).is_some() {
            return Err(TaskError::AlreadyStarted(config.id));
        }
        let options = TaskOptions::from_msgpack(&config.msgpack_driver_config)?;
        let name = spec::container_name(&config.alloc_id, &config.name);
        let memory_mib = spec::memory_mib(&config)?;
        let cpus = spec::vcpus(&options, spec::cpu_mhz(&config), context.compute);
        let ports = spec::port_bindings(&options, &config, context.config.port_offset)?;
        let bind_ip = bind_ip_for(context, &ports)?;
        let state_dir = prepare_state_dir(&config)?;

        let cli = context.cli();
        let mut create = spec::create_spec(&name, &config, &options, cpus, memory_mib);
        let env: std::collections::BTreeMap<String, String> = config
            .env
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        let (env_lines, inline_env) = spec::split_env(&env);
        let env_file = state_dir.join(ENV_FILE_NAME);
        write_private(&env_file, &env_lines)?;
        create.env_file = Some(env_file.clone());
        create.env = inline_env;

        let created = self
            .create_container(&cli, &create, context.config.image_pull_timeout)
            .await;
        // The CLI has read the file; the environment may hold secrets.
        let _ = std::fs::remove_file(&env_file);
        created?;
        tracing::info!(task_id = %config.id, container = %name, cpus, memory_mib, "container created");

        let state = DriverState {
            container: name.clone(),
            state_dir: state_dir.clone(),
            started_at: unix_now(),
            ports,
            memory_bytes: memory_mib << 20,
        };
        match self.run_task(context, &cli, config, state, bind_ip).await {
            Ok(started) => Ok(started),
            Err(error) => {
                // Nothing half-started stays behind: the supervisor ends with the container.
                if let Err(cleanup) = cli.delete(&name, true).await {
                    tracing::warn!(container = %name, error = %cleanup, "failed to delete container after a failed start");
                }
                Err(error)
            }
        }
    }

    async fn create_container(
        &self,
        cli: &ContainerCli,
        create: &crate::container::CreateSpec,
        pull_timeout: Duration,
    ) -> Result<(), TaskError> {
        let error = match cli.create(create, pull_timeout).await {
            Ok(_) => return Ok(()),
            Err(error) if error.kind() == FailureKind::AlreadyExists => error,
            Err(error) => return Err(error.into()),
        };

        // A stopped container of the same name is left over from an earlier attempt of
        // this task, but a running one belongs to someone else.
        match cli.inspect(&create.name).await? {
            Some(record) if record.state == ContainerState::Stopped => {
                tracing::info!(container = %create.name, "deleting stopped container left from an earlier attempt");
                cli.delete(&create.name, false).await?;
                cli.create(create, pull_timeout).await?;
                Ok(())
            }
            Some(_) => Err(TaskError::NameTaken {
                name: create.name.clone(),
            }),
            None => Err(error.into()),
        }
    }

    /// Starts the supervisor, waits for the container to run, publishes its ports and
    /// registers the task.
    async fn run_task(
        &self,
        context: &Context,
        cli: &ContainerCli,
        config: TaskConfig,
        state: DriverState,
        bind_ip: Option<IpAddr>,
    ) -> Result<Started, TaskError> {
        let args = SupervisorArgs {
            container_path: context.config.container_path.clone(),
            container_id: state.container.clone(),
            stdout_path: config.stdout_path.clone().into(),
            stderr_path: config.stderr_path.clone().into(),
            state_dir: state.state_dir.clone(),
        };
        exit::spawn_supervisor(&args).map_err(|source| TaskError::State {
            path: state.state_dir.clone(),
            source,
        })?;

        let ip = wait_running(cli, &state, context.config.command_timeout).await?;
        let (publication, network) = match ip {
            Some(ip) => open_listeners(context, &config, &state, bind_ip, ip)?,
            None => (None, network_override(bind_ip, &state.ports)),
        };
        let handle = TaskHandle {
            version: HANDLE_VERSION,
            config: Some(config.clone()),
            state: TaskState::Running as i32,
            driver_state: state.encode(),
        };
        tracing::info!(task_id = %config.id, container = %state.container, ip = ?ip, "task started");

        let task = self.register(config, state, network.clone(), publication, true);
        tokio::spawn(exit::watch(task, cli.clone(), self.events.clone()));
        Ok(Started { handle, network })
    }

    /// Adds a task to the registry, and to the running-tasks gauge when `running`.
    fn register(
        &self,
        config: TaskConfig,
        state: DriverState,
        network: NetworkOverride,
        publication: Option<Publication>,
        running: bool,
    ) -> Arc<Task> {
        let (exit, _) = watch::channel(None);
        let task = Arc::new(Task {
            id: config.id.clone(),
            config,
            state,
            network,
            exit,
            publication: Mutex::new(publication),
            last_memory_bytes: AtomicU64::new(0),
            counted_running: AtomicBool::new(running),
        });
        if running {
            metrics::change_running(1.0);
        }
        self.tasks.insert(task.clone());
        task
    }

    /// Rebuilds a task from its handle after a plugin restart. A container that is
    /// running gets new listeners (its address may have changed) and a new watcher. A
    /// container that stopped without a recorded exit is started again when
    /// `recover_stopped` is set. Any other stopped or missing container is registered
    /// as exited, so WaitTask reports it and Nomad applies the restart policy. Each call
    /// counts in the recovery metrics.
    pub async fn recover(&self, context: &Context, handle: TaskHandle) -> Result<(), TaskError> {
        let result = self.rebuild(context, handle).await;
        let label = match &result {
            Ok(label) => label,
            Err(_) => "failed",
        };
        metrics::record_recovery(label);
        result.map(drop)
    }

    /// Does the work of [`Lifecycle::recover`] and returns its `result` label, one of
    /// [`metrics::RECOVERY_RESULTS`].
    async fn rebuild(
        &self,
        context: &Context,
        handle: TaskHandle,
    ) -> Result<&'static str, TaskError> {
        let config = handle
            .config
            .clone()
            .ok_or_else(|| TaskError::InvalidHandle("the handle has no task config".into()))?;
        if self.tasks.get(&config.id).is_some() {
            return Ok("known");
        }
        let state = DriverState::decode(handle.version, &handle.driver_state)?;
        let cli = context.cli();
        let record = cli.inspect(&state.container).await?;

        let running = record
            .as_ref()
            .filter(|record| record.state == ContainerState::Running)
            .and_then(|record| record.ipv4);
        let stopped_unrecorded = record.is_some()
            && running.is_none()
            && supervisor::read_exit_code(&state.state_dir).is_none();
        if stopped_unrecorded && context.config.recover_stopped {
            // Stopped by a reboot or a service restart, not by its own exit.
            tracing::info!(task_id = %config.id, container = %state.container, "starting stopped container again (recover_stopped)");
            let bind_ip = bind_ip_for(context, &state.ports)?;
            for file in [supervisor::PID_FILE, supervisor::LOG_FILE] {
                let _ = std::fs::remove_file(state.state_dir.join(file));
            }
            self.run_task(context, &cli, config, state, bind_ip).await?;
            return Ok("restarted");
        }
        let Some(ip) = running else {
            let task = self.register(config, state, NetworkOverride::default(), None, false);
            let exit = match supervisor::read_exit_code(&task.state.state_dir) {
                Some(status) => Exit {
                    result: exit::exit_from_status(status, 0, task.state.memory_bytes),
                    at: SystemTime::now(),
                    unknown_reason: None,
                },
                None => {
                    let reason = match record {
                        Some(_) => format!(
                            "container {} stopped while the plugin was down and its exit code was not recorded",
                            task.state.container
                        ),
                        None => format!("container {} no longer exists", task.state.container),
                    };
                    send_event(&self.events, &task, reason.clone());
                    unknown_exit(reason)
                }
            };
            tracing::info!(task_id = %task.id, container = %task.state.container, "recovered task has exited");
            task.record_exit(exit);
            return Ok("exited");
        };

        let bind_ip = bind_ip_for(context, &state.ports)?;
        let (publication, network) = open_listeners(context, &config, &state, bind_ip, ip)?;
        tracing::info!(task_id = %config.id, container = %state.container, ip = %ip, "task recovered");
        let task = self.register(config, state, network, publication, true);
        tokio::spawn(exit::watch(task, cli, self.events.clone()));
        Ok("running")
    }

    /// Waits until the task exits and returns how.
    pub async fn wait(&self, id: &str) -> Result<Exit, TaskError> {
        let task = self.task(id)?;
        let mut exit = task.watch_exit();
        let ended = exit
            .wait_for(Option::is_some)
            .await
            .map_err(|_| TaskError::NotFound(id.to_owned()))?;
        Ok(ended.clone().expect("waited for an exit"))
    }

    /// Sends `signal` (the image's stop signal when empty), waits `timeout`, then kills.
    pub async fn stop(
        &self,
        context: &Context,
        id: &str,
        timeout: Duration,
        signal: &str,
    ) -> Result<(), TaskError> {
        let task = self.task(id)?;
        if task.exit().is_some() {
            return Ok(());
        }
        let signal = (!signal.is_empty()).then_some(signal);
        match context
            .cli()
            .stop(&task.state.container, timeout, signal)
            .await
        {
            Err(error) if error.kind() == FailureKind::NotFound => Ok(()),
            result => result.map_err(Into::into),
        }
    }

    /// Removes the task: listeners closed, container deleted (unless `gc.container` is
    /// off), supervisor ended. An unknown task is already destroyed.
    pub async fn destroy(&self, context: &Context, id: &str, force: bool) -> Result<(), TaskError> {
        let Some(task) = self.tasks.get(id) else {
            return Ok(());
        };
        if task.exit().is_none() && !force {
            return Err(TaskError::StillRunning(id.to_owned()));
        }

        task.close_listeners();
        let cli = context.cli();
        let running = task.exit().is_none();
        if running || context.config.gc_container {
            match cli.delete(&task.state.container, true).await {
                Err(error) if error.kind() != FailureKind::NotFound => return Err(error.into()),
                _ => {}
            }
        }
        if running {
            let mut exit = task.watch_exit();
            let _ = tokio::time::timeout(DESTROY_EXIT_WAIT, exit.wait_for(Option::is_some)).await;
        }
        stop_supervisor(&task.state.state_dir);
        self.tasks.remove(id);
        // Normally the exit is recorded by now, but not when the CLI hangs.
        task.leave_running();
        tracing::info!(task_id = %id, container = %task.state.container, "task destroyed");
        Ok(())
    }

    pub fn inspect(&self, id: &str) -> Result<InspectTaskResponse, TaskError> {
        let task = self.task(id)?;
        let exit = task.exit();
        let started = UNIX_EPOCH + Duration::from_secs(task.state.started_at);
        let status = TaskStatus {
            id: task.id.clone(),
            name: task.config.name.clone(),
            state: if exit.is_some() {
                TaskState::Exited
            } else {
                TaskState::Running
            } as i32,
            started_at: Some(started.into()),
            completed_at: Some(
                exit.as_ref()
                    .map_or_else(go_zero_time, |exit| exit.at.into()),
            ),
            result: Some(exit.map(|exit| exit.result).unwrap_or_default()),
        };
        let attributes = [
            ("container".to_owned(), task.state.container.clone()),
            (
                "state_dir".to_owned(),
                task.state.state_dir.display().to_string(),
            ),
        ];
        Ok(InspectTaskResponse {
            task: Some(status),
            driver: Some(TaskDriverStatus {
                attributes: attributes.into(),
            }),
            network_override: Some(task.network.clone()),
        })
    }

    /// Sends one TaskStats message per `interval` until the task exits or the client
    /// goes away.
    pub async fn stream_stats(
        &self,
        context: Context,
        id: &str,
        interval: Duration,
        sender: mpsc::Sender<Result<TaskStatsResponse, Status>>,
    ) -> Result<(), TaskError> {
        let task = self.task(id)?;
        let cli = context.cli();
        tokio::spawn(async move {
            let mut exit = task.watch_exit();
            let mut previous: Option<CpuSample> = None;
            loop {
                let started = Instant::now();
                let sample = tokio::select! {
                    sample = cli.stats(&task.state.container) => sample,
                    _ = exit.wait_for(Option::is_some) => return,
                    () = sender.closed() => return,
                };
                match sample {
                    Ok(Some(sample)) => {
                        let now = Instant::now();
                        // A sample without memory use must not erase the evidence of
                        // an OOM kill.
                        if let Some(bytes) = sample.memory_usage_bytes {
                            task.record_memory(bytes);
                        }
                        let stats = task_stats(&task.id, &sample, now, previous, context.compute);
                        previous = sample.cpu_usage_usec.map(|usage_usec| CpuSample {
                            usage_usec,
                            at: now,
                        });
                        let response = TaskStatsResponse { stats: Some(stats) };
                        if sender.send(Ok(response)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(error) => {
                        tracing::debug!(task_id = %task.id, error = %error, "stats sample failed")
                    }
                }
                let rest = interval.saturating_sub(started.elapsed());
                tokio::select! {
                    () = tokio::time::sleep(rest) => {}
                    _ = exit.wait_for(Option::is_some) => return,
                    () = sender.closed() => return,
                }
            }
        });
        Ok(())
    }

    pub async fn signal(&self, context: &Context, id: &str, signal: &str) -> Result<(), TaskError> {
        let task = self.task(id)?;
        let signal = if signal.is_empty() { "SIGKILL" } else { signal };
        context.cli().kill(&task.state.container, signal).await?;
        Ok(())
    }

    /// Runs a command in the task's container, as Nomad's script checks do.
    pub async fn exec(
        &self,
        context: &Context,
        id: &str,
        command: &[String],
        timeout: Option<Duration>,
    ) -> Result<ExecTaskResponse, TaskError> {
        let task = self.task(id)?;
        if command.is_empty() {
            return Err(TaskError::InvalidTask("exec needs a command".into()));
        }
        let timeout = timeout.unwrap_or(context.config.command_timeout);
        let output = match context
            .cli()
            .exec(&task.state.container, command, timeout)
            .await
        {
            Err(crate::container::CliError::TimedOut { .. }) => {
                return Err(TaskError::ExecTimedOut(id.to_owned()));
            }
            result => result?,
        };
        let exit_code = output.status.code().unwrap_or(-1);
        Ok(ExecTaskResponse {
            stdout: tail(output.stdout),
            stderr: tail(output.stderr),
            result: Some(ExitResult {
                exit_code,
                ..ExitResult::default()
            }),
        })
    }

    pub(super) fn task(&self, id: &str) -> Result<Arc<Task>, TaskError> {
        self.tasks
            .get(id)
            .ok_or_else(|| TaskError::NotFound(id.to_owned()))
    }
}

/// Polls `inspect` until the container runs and has an address, and returns that
/// address. Returns `None` when the container already ran and exited, as a short batch
/// task may before the first poll. Fails when `start --attach` ended without starting
/// the container, or after `limit`.
async fn wait_running(
    cli: &ContainerCli,
    state: &DriverState,
    limit: Duration,
) -> Result<Option<std::net::Ipv4Addr>, TaskError> {
    let deadline = Instant::now() + limit;
    loop {
        let record = cli.inspect(&state.container).await?;
        if let Some(record) = &record
            && record.state == ContainerState::Running
            && let Some(ip) = record.ipv4
        {
            return Ok(Some(ip));
        }

        let supervisor_ended = supervisor::read_exit_code(&state.state_dir).is_some()
            || std::fs::metadata(state.state_dir.join(supervisor::LOG_FILE))
                .is_ok_and(|log| log.len() > 0);
        if supervisor_ended {
            // The record above may predate the start of a task that has run and exited
            // since, so it is read again. A fresh container has no start date, so one
            // means it ran.
            let record = cli.inspect(&state.container).await?;
            let ran = record.is_some_and(|record| record.started_at.is_some())
                && supervisor::read_exit_code(&state.state_dir).is_some();
            if ran {
                return Ok(None);
            }
            return Err(TaskError::NotStarted {
                container: state.container.clone(),
                reason: "container start --attach ended at once; the task's stderr log has the CLI's message".into(),
            });
        }
        if Instant::now() >= deadline {
            return Err(TaskError::NotStarted {
                container: state.container.clone(),
                reason: format!("not running with an address after {limit:?}"),
            });
        }
        tokio::time::sleep(START_POLL).await;
    }
}

/// Resolves the bind address, only when the task publishes ports.
fn bind_ip_for(context: &Context, ports: &[PortBinding]) -> Result<Option<IpAddr>, TaskError> {
    if ports.is_empty() {
        return Ok(None);
    }
    publish::resolve_bind_ip(context.config.bind_address).map(Some)
}

/// Opens the task's listeners towards `ip` and returns them with the driver network.
fn open_listeners(
    context: &Context,
    config: &TaskConfig,
    state: &DriverState,
    bind_ip: Option<IpAddr>,
    ip: std::net::Ipv4Addr,
) -> Result<(Option<Publication>, NetworkOverride), TaskError> {
    let publication = match bind_ip {
        Some(bind_ip) => publish::publish(
            config,
            bind_ip,
            ip,
            &state.ports,
            context.config.preconnect_pool_size,
        )?,
        None => None,
    };
    Ok((publication, network_override(bind_ip, &state.ports)))
}

fn network_override(bind_ip: Option<IpAddr>, ports: &[PortBinding]) -> NetworkOverride {
    NetworkOverride {
        port_map: ports
            .iter()
            .map(|port| (port.label.clone(), i32::from(port.host_port)))
            .collect(),
        addr: bind_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        // Container addresses are private to each Mac. Services with address_mode
        // "auto" keep the host address, and "driver" gets the bind address above.
        auto_advertise: false,
    }
}

/// Creates `<alloc dir>/<task>/.styx-driver` and clears files of an earlier attempt.
fn prepare_state_dir(config: &TaskConfig) -> Result<PathBuf, TaskError> {
    let dir = Path::new(&config.alloc_dir)
        .join(&config.name)
        .join(STATE_DIR_NAME);
    let io_error = |source| TaskError::State {
        path: dir.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(io_error)?;
    for file in [
        supervisor::EXIT_FILE,
        supervisor::PID_FILE,
        supervisor::LOG_FILE,
    ] {
        match std::fs::remove_file(dir.join(file)) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_error(error));
            }
            _ => {}
        }
    }
    Ok(dir)
}

fn write_private(path: &Path, contents: &str) -> Result<(), TaskError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let result = std::fs::File::options()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(contents.as_bytes()));
    result.map_err(|source| TaskError::State {
        path: path.to_owned(),
        source,
    })
}

/// Ends a supervisor that outlived its container, which happens only when the CLI
/// hangs.
fn stop_supervisor(state_dir: &Path) {
    let Some(pid) = supervisor::read_pid(state_dir) else {
        return;
    };
    if supervisor::read_exit_code(state_dir).is_none()
        && let Some(pid) = rustix::process::Pid::from_raw(pid)
        && supervisor::process_alive(pid.as_raw_nonzero().get())
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}

/// Go's zero time, which Nomad's client reads as "not completed".
fn go_zero_time() -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: -62_135_596_800,
        nanos: 0,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

fn tail(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.len() > MAX_EXEC_OUTPUT {
        bytes.drain(..bytes.len() - MAX_EXEC_OUTPUT);
    }
    bytes
}

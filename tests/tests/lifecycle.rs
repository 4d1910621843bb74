//! The task lifecycle of `styx-driver`, driven as a Nomad client drives it, over the
//! `container-sim` simulator: start, reach through the published port, stats, signals,
//! stop, exit codes, destroy, logs, and recovery in a relaunched plugin.
//!
//! Timeouts only stop a hung test; no test asserts a speed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use styx_driver::proto::drivers::{
    DriverTaskEvent, ExecTaskRequest, ExecTaskStreamingIoOperation, ExecTaskStreamingRequest,
    InspectTaskRequest, RecoverTaskRequest, SignalTaskRequest, StartTaskResponse, TaskConfig,
    TaskEventsRequest, TaskHandle, TaskState, TaskStatsRequest, WaitTaskResponse,
    exec_task_streaming_request,
};
use styx_driver::task::status_is_recoverable;
use styx_tests::cty::Value;
use styx_tests::nomad::{Plugin, send_signal};
use styx_tests::published::{published_addr, start_echo_task, wait_for_echo};
use styx_tests::rpc::{destroy_task, start_task, stop_task, wait_task};
use styx_tests::sim::{Simulator, launch_plugin};
use styx_tests::task::{Port, PreparedTask, TaskSpec, free_port};
use tonic::{Code, Status, Streaming};

const PLUGIN: &str = env!("CARGO_BIN_EXE_styx-driver-under-test");
const SIMULATOR: &str = env!("CARGO_BIN_EXE_container-sim");

/// Stops a test that hangs; generous because several builds share a busy machine.
const HANG_TIMEOUT: Duration = Duration::from_secs(60);

/// One simulated Mac: a simulator state directory, a plugin, and the alloc dirs.
struct Harness {
    dir: tempfile::TempDir,
    sim: Simulator,
    plugin: Plugin,
    extra_env: Vec<(String, String)>,
    recover_stopped: bool,
}

impl Harness {
    async fn start() -> Self {
        Self::start_with_env(Vec::new()).await
    }

    async fn start_with_env(extra_env: Vec<(String, String)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sim = Simulator::new(Path::new(SIMULATOR), &dir.path().join("sim"));
        let plugin = launch_plugin(Path::new(PLUGIN), dir.path(), &sim, &extra_env, false).await;
        Self {
            dir,
            sim,
            plugin,
            extra_env,
            recover_stopped: false,
        }
    }

    /// Kills the plugin with SIGKILL, as a crash would, and launches a new one.
    async fn relaunch(&mut self) {
        let pid = self.plugin.pid().expect("plugin runs");
        send_signal(pid, "-KILL").unwrap();
        self.plugin.wait_exit(HANG_TIMEOUT).await.unwrap();
        self.plugin = launch_plugin(
            Path::new(PLUGIN),
            self.dir.path(),
            &self.sim,
            &self.extra_env,
            self.recover_stopped,
        )
        .await;
    }

    /// Prepares the task's directories and FIFOs and calls StartTask.
    async fn start_task(
        &self,
        spec: &TaskSpec,
        body: &Value,
    ) -> (PreparedTask, Result<StartTaskResponse, Status>) {
        start_task(&self.plugin, self.dir.path(), spec, body, HANG_TIMEOUT).await
    }

    async fn wait(&self, id: &str) -> WaitTaskResponse {
        wait_task(&self.plugin, id, HANG_TIMEOUT).await
    }

    async fn stop(&self, id: &str, timeout: Duration, signal: &str) {
        stop_task(&self.plugin, id, timeout, signal).await;
    }

    async fn destroy(&self, id: &str) {
        destroy_task(&self.plugin, id).await;
    }

    async fn recover(&self, handle: TaskHandle) -> Result<(), Status> {
        // Nomad leaves task_id empty.
        let request = RecoverTaskRequest {
            task_id: String::new(),
            handle: Some(handle),
        };
        self.plugin.driver().recover_task(request).await.map(drop)
    }

    async fn inspect_state(&self, id: &str) -> TaskState {
        let response = self
            .plugin
            .driver()
            .inspect_task(InspectTaskRequest {
                task_id: id.to_owned(),
            })
            .await
            .expect("InspectTask succeeds")
            .into_inner();
        let task = response.task.expect("task status is set");
        assert!(task.started_at.is_some(), "started_at is always set");
        assert!(task.completed_at.is_some(), "completed_at is always set");
        assert!(task.result.is_some(), "result is always set");
        TaskState::try_from(task.state).unwrap()
    }

    async fn events(&self) -> Streaming<DriverTaskEvent> {
        self.plugin
            .driver()
            .task_events(TaskEventsRequest {})
            .await
            .unwrap()
            .into_inner()
    }
}

fn image(image: &str, args: &[&str]) -> Value {
    Value::object([
        ("image", Value::string(image)),
        ("args", Value::strings(args)),
    ])
}

fn image_with_ports(image: &str, args: &[&str], ports: &[&str]) -> Value {
    Value::object([
        ("image", Value::string(image)),
        ("args", Value::strings(args)),
        ("ports", Value::strings(ports)),
    ])
}

fn http_spec(name: &str) -> TaskSpec {
    let mut spec = TaskSpec::new(name);
    spec.ports = vec![Port {
        label: "http".to_owned(),
        value: free_port(),
        to: 8080,
    }];
    spec
}

/// Sends one HTTP request to `addr` and returns the response, retrying while the
/// server in the container is still starting.
fn http_get(addr: SocketAddr) -> String {
    let deadline = Instant::now() + HANG_TIMEOUT;
    loop {
        match try_http_get(addr) {
            Ok(response) if response.starts_with("HTTP/1.1 200") => return response,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "no HTTP answer from {addr}: {other:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn try_http_get(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// Kills a task's supervisor with SIGKILL, so that nothing records the exit.
fn kill_supervisor(config: &TaskConfig) {
    let pid_file = styx_tests::task::state_file(config, "supervisor.pid");
    let supervisor_pid = std::fs::read_to_string(pid_file).unwrap();
    send_signal(supervisor_pid.trim().parse().unwrap(), "-KILL").unwrap();
}

async fn next_event(events: &mut Streaming<DriverTaskEvent>) -> DriverTaskEvent {
    tokio::time::timeout(HANG_TIMEOUT, events.message())
        .await
        .expect("an event arrives")
        .expect("the event stream has no error")
        .expect("the event stream is open")
}

/// Waits until `condition` holds, polling every 50 ms.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + HANG_TIMEOUT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn http_task_start_to_destroy() {
    let harness = Harness::start().await;
    let spec = http_spec("web");
    let (prepared, response) = harness
        .start_task(&spec, &image_with_ports("styx/http-env", &[], &["http"]))
        .await;
    let response = response.expect("StartTask succeeds");
    let id = prepared.config.id.clone();
    let container = styx_driver::task::container_name(&spec.alloc_id, "web");

    let handle = response.handle.clone().expect("handle is set");
    assert_eq!(handle.version, 1);
    assert_eq!(handle.config.as_ref().unwrap().id, id);
    let network = response
        .network_override
        .clone()
        .expect("driver network is set");
    assert_eq!(network.addr, "127.0.0.1");
    assert_eq!(network.port_map["http"], i32::from(spec.ports[0].value));
    assert!(!network.auto_advertise);

    // Through the driver's listener to the container's server, which prints its env.
    let addr = published_addr(&response, "http");
    let body = tokio::task::spawn_blocking(move || http_get(addr))
        .await
        .unwrap();
    assert!(body.contains("NOMAD_TASK_NAME=web"), "{body}");
    assert!(
        body.contains(&format!("NOMAD_ALLOC_ID={}", spec.alloc_id)),
        "{body}"
    );

    // Explicit resources, never the CLI's 1 GiB default: 500 MHz on 2000 MHz cores.
    let inspect = harness.sim.run(["inspect", container.as_str()]);
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(text.contains("\"memoryInBytes\" : 268435456"), "{text}");
    assert!(text.contains("\"cpus\" : 1"), "{text}");

    let mut stats = harness
        .plugin
        .driver()
        .task_stats(TaskStatsRequest {
            task_id: id.clone(),
            collection_interval: Some(Duration::from_millis(200).try_into().unwrap()),
        })
        .await
        .unwrap()
        .into_inner();
    let sample = tokio::time::timeout(HANG_TIMEOUT, stats.message())
        .await
        .unwrap()
        .unwrap()
        .expect("a stats message")
        .stats
        .expect("stats are set");
    assert!(sample.timestamp.is_some());
    let usage = sample.agg_resource_usage.expect("aggregate usage is set");
    assert!(usage.memory.unwrap().rss > 0);
    assert!(usage.cpu.is_some());
    assert_eq!(harness.inspect_state(&id).await, TaskState::Running);

    harness.stop(&id, Duration::from_secs(5), "SIGTERM").await;
    let exit = harness.wait(&id).await;
    let result = exit.result.unwrap();
    assert_eq!(result.exit_code, 143);
    assert_eq!(result.signal, 15);
    assert!(!result.oom_killed);
    assert_eq!(harness.inspect_state(&id).await, TaskState::Exited);

    harness.destroy(&id).await;
    assert!(!harness.sim.exists(&container), "container is deleted");
    assert!(TcpStream::connect(addr).is_err(), "listener is closed");
    let plugin_pid = harness.plugin.pid().unwrap();
    eventually("no process left", || {
        harness
            .sim
            .live_processes()
            .iter()
            .all(|pid| *pid == plugin_pid)
    })
    .await;
    let status = harness
        .plugin
        .driver()
        .inspect_task(InspectTaskRequest {
            task_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn exit_codes_reported() {
    let harness = Harness::start().await;
    // "5" exits at once, before StartTask can see the container running.
    for (code, delay) in [("0", "200"), ("3", "200"), ("5", "0")] {
        let spec = TaskSpec::new(&format!("exit{code}"));
        let (prepared, response) = harness
            .start_task(&spec, &image("styx/exit", &[code, delay]))
            .await;
        response.expect("StartTask succeeds");

        let exit = harness.wait(&prepared.config.id).await;
        let result = exit.result.unwrap();
        assert_eq!(result.exit_code.to_string(), code);
        assert_eq!(result.signal, 0);
        assert!(exit.err.is_empty(), "{}", exit.err);
        harness.destroy(&prepared.config.id).await;
    }
}

#[tokio::test]
async fn memory_growth_reports_oom() {
    let harness = Harness::start().await;
    let mut events = harness.events().await;
    let mut spec = TaskSpec::new("grower");
    spec.memory_mb = 200;
    let (prepared, response) = harness
        .start_task(&spec, &image("styx/memory-grower", &["1", "50"]))
        .await;
    response.expect("StartTask succeeds");
    let id = prepared.config.id.clone();

    // Nomad samples stats of every running task; the samples are the OOM evidence.
    let mut stats = harness
        .plugin
        .driver()
        .task_stats(TaskStatsRequest {
            task_id: id.clone(),
            collection_interval: Some(Duration::from_millis(100).try_into().unwrap()),
        })
        .await
        .unwrap()
        .into_inner();
    tokio::spawn(async move { while let Ok(Some(_)) = stats.message().await {} });

    let result = harness.wait(&id).await.result.unwrap();
    assert_eq!(result.exit_code, 137);
    assert_eq!(result.signal, 9);
    assert!(result.oom_killed);
    let event = next_event(&mut events).await;
    assert_eq!(event.task_id, id);
    assert_eq!(event.task_name, "grower");
    assert!(event.message.contains("OOM killed"), "{}", event.message);
    harness.destroy(&id).await;
}

#[tokio::test]
async fn signals_reach_container() {
    let harness = Harness::start().await;
    let spec = TaskSpec::new("stubborn");
    let (prepared, response) = harness
        .start_task(&spec, &image("styx/ignore-term", &[]))
        .await;
    response.expect("StartTask succeeds");
    let id = prepared.config.id.clone();

    let signal = |name: &str| SignalTaskRequest {
        task_id: id.clone(),
        signal: name.to_owned(),
    };
    eventually("the image to install its handler", || {
        prepared.stdout.lines().iter().any(|line| line == "ready")
    })
    .await;
    harness
        .plugin
        .driver()
        .signal_task(signal("SIGTERM"))
        .await
        .unwrap();
    eventually("the image to log the ignored signal", || {
        prepared
            .stdout
            .lines()
            .iter()
            .any(|line| line == "ignoring SIGTERM")
    })
    .await;
    assert_eq!(harness.inspect_state(&id).await, TaskState::Running);

    // StopTask sends SIGTERM, waits its timeout, then kills.
    harness.stop(&id, Duration::from_secs(1), "SIGTERM").await;
    let result = harness.wait(&id).await.result.unwrap();
    assert_eq!(result.exit_code, 137);
    assert!(
        !result.oom_killed,
        "a kill far below the memory limit is no OOM"
    );
    harness.destroy(&id).await;
}

#[tokio::test]
async fn exec_runs_command() {
    let harness = Harness::start().await;
    let spec = TaskSpec::new("shell");
    let (prepared, response) = harness
        .start_task(&spec, &image("styx/exit", &["0", "60000"]))
        .await;
    response.expect("StartTask succeeds");
    let id = prepared.config.id.clone();

    let request = ExecTaskRequest {
        task_id: id.clone(),
        command: vec![
            "sh".into(),
            "-c".into(),
            "echo $NOMAD_TASK_NAME; echo oops >&2; exit 3".into(),
        ],
        timeout: Some(Duration::from_secs(10).try_into().unwrap()),
    };
    let response = harness
        .plugin
        .driver()
        .exec_task(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.stdout, b"shell\n");
    assert_eq!(response.stderr, b"oops\n");
    assert_eq!(response.result.expect("result is set").exit_code, 3);
    harness.destroy(&id).await;
}

/// Checks that `lines` are `<prefix> 0`, `<prefix> 1`, ... with no gap or repeat.
fn assert_consecutive(lines: &[String], prefix: &str) {
    for (index, line) in lines.iter().enumerate() {
        assert_eq!(
            line,
            &format!("{prefix} {index}"),
            "line {index} of {lines:?}"
        );
    }
}

#[tokio::test]
async fn plugin_crash_keeps_tasks() {
    let mut harness = Harness::start().await;
    let chatter_spec = TaskSpec::new("chatter");
    let (chatter, response) = harness
        .start_task(&chatter_spec, &image("styx/chatter", &["20"]))
        .await;
    let chatter_handle = response.expect("StartTask succeeds").handle.unwrap();
    let web_spec = http_spec("web");
    let (web, response) = harness
        .start_task(
            &web_spec,
            &image_with_ports("styx/http-env", &[], &["http"]),
        )
        .await;
    let response = response.expect("StartTask succeeds");
    let web_handle = response.handle.clone().unwrap();
    let addr = published_addr(&response, "http");

    eventually("output before the crash", || {
        chatter.stdout.lines().len() >= 5
    })
    .await;
    harness.relaunch().await;
    assert!(
        TcpStream::connect(addr).is_err(),
        "listeners died with the plugin"
    );
    let lines_at_crash = chatter.stdout.lines().len();

    harness
        .recover(chatter_handle)
        .await
        .expect("RecoverTask succeeds");
    harness
        .recover(web_handle.clone())
        .await
        .expect("RecoverTask succeeds");
    harness
        .recover(web_handle)
        .await
        .expect("a second RecoverTask is a no-op");

    let body = tokio::task::spawn_blocking(move || http_get(addr))
        .await
        .unwrap();
    assert!(body.contains("NOMAD_TASK_NAME=web"), "{body}");
    eventually("output after recovery", || {
        chatter.stdout.lines().len() >= lines_at_crash + 10
    })
    .await;

    let id = chatter.config.id.clone();
    harness.stop(&id, Duration::from_secs(5), "").await;
    let result = harness.wait(&id).await.result.unwrap();
    assert_eq!(result.exit_code, 143);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_consecutive(&chatter.stdout.lines(), "out");
    assert_consecutive(&chatter.stderr.lines(), "err");
    assert!(chatter.stderr.lines().len() >= 10);

    harness
        .stop(&web.config.id, Duration::from_secs(5), "SIGTERM")
        .await;
    assert_eq!(
        harness.wait(&web.config.id).await.result.unwrap().exit_code,
        143
    );
    harness.destroy(&id).await;
    harness.destroy(&web.config.id).await;
}

#[tokio::test]
async fn deleted_container_reported_exited() {
    let mut harness = Harness::start().await;
    let spec = TaskSpec::new("victim");
    let (prepared, response) = harness
        .start_task(&spec, &image("styx/exit", &["0", "60000"]))
        .await;
    response.expect("StartTask succeeds");
    let container = styx_driver::task::container_name(&spec.alloc_id, "victim");

    let deleted = harness.sim.run(["delete", "--force", container.as_str()]);
    assert!(deleted.status.success());
    let exit = harness.wait(&prepared.config.id).await;
    assert_eq!(exit.result.unwrap().exit_code, 137);
    harness.destroy(&prepared.config.id).await;

    // The same while the plugin is down: recovery finds no container.
    let spec = TaskSpec::new("victim2");
    let (prepared, response) = harness
        .start_task(&spec, &image("styx/exit", &["0", "60000"]))
        .await;
    let handle = response.expect("StartTask succeeds").handle.unwrap();
    let container = styx_driver::task::container_name(&spec.alloc_id, "victim2");
    harness.relaunch().await;
    // Kill the supervisor too, so nothing recorded the exit.
    kill_supervisor(&prepared.config);
    assert!(
        harness
            .sim
            .run(["delete", "--force", container.as_str()])
            .status
            .success()
    );

    let mut events = harness.events().await;
    harness.recover(handle).await.expect("RecoverTask succeeds");
    let exit = harness.wait(&prepared.config.id).await;
    assert!(exit.err.contains("no longer exists"), "{}", exit.err);
    let event = next_event(&mut events).await;
    assert!(
        event.message.contains("no longer exists"),
        "{}",
        event.message
    );
    harness.destroy(&prepared.config.id).await;
}

#[tokio::test]
async fn supervisor_gone_falls_back_to_inspect() {
    let mut harness = Harness::start().await;
    let spec = TaskSpec::new("orphan");
    let (prepared, response) = harness
        .start_task(&spec, &image("styx/exit", &["0", "60000"]))
        .await;
    let handle = response.expect("StartTask succeeds").handle.unwrap();
    let container = styx_driver::task::container_name(&spec.alloc_id, "orphan");

    harness.relaunch().await;
    kill_supervisor(&prepared.config);

    let mut events = harness.events().await;
    harness.recover(handle).await.expect("RecoverTask succeeds");
    let event = next_event(&mut events).await;
    assert!(
        event.message.contains("exit code is unknown"),
        "{}",
        event.message
    );

    assert!(
        harness
            .sim
            .run(["stop", "-t", "1", container.as_str()])
            .status
            .success()
    );
    let exit = harness.wait(&prepared.config.id).await;
    assert_eq!(exit.result.unwrap().exit_code, 0);
    assert!(exit.err.contains("unknown"), "{}", exit.err);
    harness.destroy(&prepared.config.id).await;
}

/// An exit code the driver could not learn must come with a reason in `err`. Nomad's
/// client turns a non-empty `err` into the exit's error, and `ExitResult.Successful`
/// (Nomad 2.0.6-dev, `plugins/drivers/driver.go`) counts an exit with an error as a
/// failure even when its exit code and signal are 0.
#[tokio::test]
async fn unrecorded_stop_reported_unknown() {
    let mut harness = Harness::start().await;
    let spec = TaskSpec::new("lost");
    let (prepared, response) = harness
        .start_task(&spec, &image("styx/exit", &["0", "60000"]))
        .await;
    let handle = response.expect("StartTask succeeds").handle.unwrap();
    let container = styx_driver::task::container_name(&spec.alloc_id, "lost");

    // A Mac reboot without recover_stopped: the plugin and the supervisor die, and the
    // container stops with nothing recording its exit.
    harness.relaunch().await;
    kill_supervisor(&prepared.config);
    let stopped = harness.sim.run(["stop", "-t", "1", container.as_str()]);
    assert!(stopped.status.success());

    let mut events = harness.events().await;
    harness.recover(handle).await.expect("RecoverTask succeeds");
    let exit = harness.wait(&prepared.config.id).await;
    let result = exit.result.unwrap();
    assert_eq!(result.exit_code, 0);
    assert_eq!(result.signal, 0);
    assert!(exit.err.contains("was not recorded"), "{}", exit.err);
    let event = next_event(&mut events).await;
    assert!(
        event.message.contains("was not recorded"),
        "{}",
        event.message
    );
    harness.destroy(&prepared.config.id).await;
}

#[tokio::test]
async fn start_errors_are_clear() {
    let harness = Harness::start().await;

    let (_, response) = harness
        .start_task(&TaskSpec::new("typo"), &image("styx/nope", &[]))
        .await;
    let status = response.unwrap_err();
    assert!(
        status.message().contains("401 Unauthorized"),
        "{}",
        status.message()
    );
    assert!(
        !status_is_recoverable(&status),
        "a missing image stays missing"
    );

    let spec = TaskSpec::new("taken");
    let container = styx_driver::task::container_name(&spec.alloc_id, "taken");
    let created = harness.sim.run([
        "create",
        "--name",
        container.as_str(),
        "--memory",
        "256m",
        "styx/echo",
    ]);
    assert!(created.status.success());
    assert!(
        harness
            .sim
            .run(["start", container.as_str()])
            .status
            .success()
    );
    let (_, response) = harness.start_task(&spec, &image("styx/echo", &[])).await;
    let status = response.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("is taken"),
        "{}",
        status.message()
    );
    assert!(!status_is_recoverable(&status));
    harness.sim.run(["delete", "--force", container.as_str()]);

    // A host port in use: retry may help once it is free, and no container is left.
    let spec = http_spec("busy");
    let _holder = std::net::TcpListener::bind(("127.0.0.1", spec.ports[0].value)).unwrap();
    let (_, response) = harness
        .start_task(&spec, &image_with_ports("styx/http-env", &[], &["http"]))
        .await;
    let status = response.unwrap_err();
    assert!(
        status.message().contains("failed to publish port \"http\""),
        "{}",
        status.message()
    );
    assert!(status_is_recoverable(&status));
    let container = styx_driver::task::container_name(&spec.alloc_id, "busy");
    assert!(
        !harness.sim.exists(&container),
        "the failed start left a container"
    );

    harness.sim.set_system_running(false);
    let (_, response) = harness
        .start_task(&TaskSpec::new("down"), &image("styx/echo", &[]))
        .await;
    let status = response.unwrap_err();
    assert!(
        status.message().contains("XPC connection error"),
        "{}",
        status.message()
    );
    assert!(status_is_recoverable(&status), "the service may come back");
    harness.sim.set_system_running(true);
}

#[tokio::test]
async fn thirty_tasks_recover_together() {
    const TASKS: usize = 30;
    let mut harness = Harness::start().await;
    let mut tasks = Vec::new();
    for index in 0..TASKS {
        let name = format!("echo{index}");
        let (_, prepared, response) =
            start_echo_task(&harness.plugin, harness.dir.path(), &name, HANG_TIMEOUT).await;
        tasks.push((prepared, response));
    }

    harness.relaunch().await;
    let started = Instant::now();
    let mut recoveries = tokio::task::JoinSet::new();
    for (_, response) in &tasks {
        let mut driver = harness.plugin.driver();
        let request = RecoverTaskRequest {
            task_id: String::new(),
            handle: response.handle.clone(),
        };
        recoveries.spawn(async move { driver.recover_task(request).await });
    }
    while let Some(result) = recoveries.join_next().await {
        result.unwrap().expect("RecoverTask succeeds");
    }
    let elapsed = started.elapsed();
    println!("recovered {TASKS} tasks in {elapsed:?}");
    assert!(elapsed < HANG_TIMEOUT);

    for (prepared, response) in &tasks {
        let addr = published_addr(response, "echo");
        tokio::task::spawn_blocking(move || wait_for_echo(addr, HANG_TIMEOUT))
            .await
            .unwrap();
        harness.destroy(&prepared.config.id).await;
    }
}

#[tokio::test]
async fn older_json_layouts_work() {
    for layout in ["0.7", "0.8", "1.4"] {
        let harness =
            Harness::start_with_env(vec![("CONTAINER_SIM_LAYOUT".to_owned(), layout.to_owned())])
                .await;
        let spec = http_spec("web");
        let (prepared, response) = harness
            .start_task(&spec, &image_with_ports("styx/http-env", &[], &["http"]))
            .await;
        let response = response.unwrap_or_else(|status| panic!("layout {layout}: {status}"));

        let addr = published_addr(&response, "http");
        let body = tokio::task::spawn_blocking(move || http_get(addr))
            .await
            .unwrap();
        assert!(
            body.contains("NOMAD_TASK_NAME=web"),
            "layout {layout}: {body}"
        );

        harness
            .stop(&prepared.config.id, Duration::from_secs(5), "SIGTERM")
            .await;
        let result = harness.wait(&prepared.config.id).await.result.unwrap();
        assert_eq!(result.exit_code, 143, "layout {layout}");
        harness.destroy(&prepared.config.id).await;
    }
}

#[tokio::test]
async fn stopped_container_started_again() {
    let mut harness = Harness::start().await;
    harness.recover_stopped = true;
    let spec = http_spec("web");
    let (prepared, response) = harness
        .start_task(&spec, &image_with_ports("styx/http-env", &[], &["http"]))
        .await;
    let response = response.expect("StartTask succeeds");
    let addr = published_addr(&response, "http");
    let container = styx_driver::task::container_name(&spec.alloc_id, "web");

    // A Mac reboot: the plugin and the supervisor die, the container stops unrecorded.
    harness.relaunch().await;
    kill_supervisor(&prepared.config);
    let stopped = harness.sim.run(["stop", "-t", "1", container.as_str()]);
    assert!(stopped.status.success());

    harness
        .recover(response.handle.unwrap())
        .await
        .expect("RecoverTask succeeds");
    assert_eq!(
        harness.inspect_state(&prepared.config.id).await,
        TaskState::Running
    );
    let body = tokio::task::spawn_blocking(move || http_get(addr))
        .await
        .unwrap();
    assert!(body.contains("NOMAD_TASK_NAME=web"), "{body}");

    harness
        .stop(&prepared.config.id, Duration::from_secs(5), "SIGTERM")
        .await;
    let result = harness.wait(&prepared.config.id).await.result.unwrap();
    assert_eq!(result.exit_code, 143);
    harness.destroy(&prepared.config.id).await;
}

#[tokio::test]
async fn exec_streaming_relays_io() {
    let harness = Harness::start().await;
    let spec = TaskSpec::new("shell");
    let (prepared, response) = harness
        .start_task(&spec, &image("styx/exit", &["0", "60000"]))
        .await;
    response.expect("StartTask succeeds");
    let id = prepared.config.id.clone();

    let setup = ExecTaskStreamingRequest {
        setup: Some(exec_task_streaming_request::Setup {
            task_id: id.clone(),
            command: vec![
                "sh".into(),
                "-c".into(),
                "cat; echo done >&2; exit 4".into(),
            ],
            tty: false,
        }),
        ..ExecTaskStreamingRequest::default()
    };
    let input = |data: &[u8], close: bool| ExecTaskStreamingRequest {
        stdin: Some(ExecTaskStreamingIoOperation {
            data: data.to_vec(),
            close,
        }),
        ..ExecTaskStreamingRequest::default()
    };
    let requests = tokio_stream::iter(vec![setup, input(b"hello\n", false), input(b"", true)]);
    let mut responses = harness
        .plugin
        .driver()
        .exec_task_streaming(requests)
        .await
        .expect("ExecTaskStreaming starts")
        .into_inner();

    let (mut stdout, mut stderr, mut result) = (Vec::new(), Vec::new(), None);
    while let Some(message) = tokio::time::timeout(HANG_TIMEOUT, responses.message())
        .await
        .expect("exec output arrives")
        .expect("exec stream has no error")
    {
        if let Some(operation) = message.stdout {
            stdout.extend(operation.data);
        }
        if let Some(operation) = message.stderr {
            stderr.extend(operation.data);
        }
        if message.exited {
            result = message.result;
            break;
        }
    }
    assert_eq!(stdout, b"hello\n");
    assert_eq!(stderr, b"done\n");
    assert_eq!(result.expect("exit result is set").exit_code, 4);
    harness.destroy(&id).await;
}

//! The driver's Prometheus endpoint (`metrics_address`), scraped over HTTP while the
//! driver runs tasks on the `container-sim` simulator, as a Nomad client drives it.
//!
//! Every endpoint binds 127.0.0.1. Timeouts only stop a hung test; no test asserts a
//! speed.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use styx_driver::metrics::{
    CONTAINER_CLI_CALLS_TOTAL, CONTAINER_CLI_DURATION_SECONDS, EXIT_RESULTS, TASK_EXITS_TOTAL,
    TASK_RECOVERIES_TOTAL, TASK_STARTS_TOTAL, TASKS_RUNNING,
};
use styx_driver::proto::base::{ConfigSchemaRequest, SetConfigRequest};
use styx_driver::proto::drivers::{RecoverTaskRequest, StartTaskResponse};
use styx_proxy::metrics::{BYTES_TOTAL, CONNECTIONS_TOTAL};
use styx_tests::cty::{Value, encode_with_spec};
use styx_tests::nomad::{Plugin, send_signal};
use styx_tests::prometheus::{Sample, parse, scrape, value};
use styx_tests::published::{echo, published_addr, start_echo_task, wait_for_echo};
use styx_tests::rpc::{destroy_task, stop_task, wait_task};
use styx_tests::sim::{Simulator, launch_unconfigured, plugin_options, set_plugin_config};
use styx_tests::task::{PreparedTask, TaskSpec, free_port};
use tonic::Code;

const PLUGIN: &str = env!("CARGO_BIN_EXE_styx-driver-under-test");
const SIMULATOR: &str = env!("CARGO_BIN_EXE_container-sim");

/// Stops a test that hangs; generous because several builds share a busy machine.
const HANG_TIMEOUT: Duration = Duration::from_secs(60);

/// Bytes pushed through the published port, more than one socket buffer so the
/// transfer takes several reads on each side.
const PAYLOAD_BYTES: usize = 300_000;

/// One simulated Mac whose plugin has not had SetConfig yet.
struct Node {
    dir: tempfile::TempDir,
    sim: Simulator,
    plugin: Plugin,
}

impl Node {
    async fn launch() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sim = Simulator::new(Path::new(SIMULATOR), &dir.path().join("sim"));
        let plugin = launch_unconfigured(Path::new(PLUGIN), dir.path(), &sim, &[]).await;
        Self { dir, sim, plugin }
    }

    /// Kills the plugin with SIGKILL, as a crash would, and launches a new one.
    async fn relaunch(&mut self) {
        let pid = self.plugin.pid().expect("plugin runs");
        send_signal(pid, "-KILL").unwrap();
        self.plugin.wait_exit(HANG_TIMEOUT).await.unwrap();
        self.plugin = launch_unconfigured(Path::new(PLUGIN), self.dir.path(), &self.sim, &[]).await;
    }

    /// Sends the simulator config plus `metrics_address` as the long-lived instance.
    async fn configure(&self, metrics_address: &str) -> Result<(), tonic::Status> {
        let mut options = plugin_options(&self.sim, false);
        options.push(("metrics_address", Value::string(metrics_address)));
        set_plugin_config(&self.plugin, &Value::object(options)).await
    }

    /// Starts a `styx/echo` task that publishes its port 7 on a free host port.
    async fn start_echo(&self, name: &str) -> (TaskSpec, PreparedTask, StartTaskResponse) {
        start_echo_task(&self.plugin, self.dir.path(), name, HANG_TIMEOUT).await
    }

    async fn stop_and_wait(&self, id: &str) {
        stop_task(&self.plugin, id, Duration::from_secs(5), "").await;
        wait_task(&self.plugin, id, HANG_TIMEOUT).await;
    }

    async fn destroy(&self, id: &str) {
        destroy_task(&self.plugin, id).await;
    }
}

fn loopback_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

async fn samples(addr: SocketAddr) -> Vec<Sample> {
    let page = scrape(addr).await.expect("scrape succeeds");
    parse(&page).expect("page parses")
}

/// Scrapes until `name` with `labels` has `expected`, because connection tasks record
/// their bytes just after the sockets close. Returns the last page.
async fn wait_for_value(
    addr: SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
    expected: f64,
) -> Vec<Sample> {
    let deadline = Instant::now() + HANG_TIMEOUT;
    loop {
        let page = samples(addr).await;
        let seen = value(&page, name, labels).ok();
        if seen == Some(expected) {
            return page;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{labels:?} stayed at {seen:?}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn payload() -> Vec<u8> {
    (0..PAYLOAD_BYTES)
        .map(|index| (index % 251) as u8)
        .collect()
}

#[tokio::test]
async fn endpoint_follows_task_lifecycle() {
    let node = Node::launch().await;
    let metrics = loopback_addr();
    node.configure(&metrics.to_string())
        .await
        .expect("config with metrics_address accepted");

    // Every driver series exists at 0 before the first task.
    let page = samples(metrics).await;
    assert_eq!(value(&page, TASKS_RUNNING, &[]).unwrap(), 0.0);
    assert_eq!(
        value(&page, TASK_STARTS_TOTAL, &[("result", "started")]).unwrap(),
        0.0
    );

    let (spec, prepared, response) = node.start_echo("echo").await;
    let listener = "default/job/group/echo/echo";
    let published = published_addr(&response, "echo");
    tokio::task::spawn_blocking(move || wait_for_echo(published, HANG_TIMEOUT))
        .await
        .unwrap();

    // Probes may have been accepted before the container listened, so the byte
    // counters are compared with a baseline taken once the echo works.
    let upstream_bytes = [("listener", listener), ("direction", "client_to_upstream")];
    let client_bytes = [("listener", listener), ("direction", "upstream_to_client")];
    let baseline = samples(metrics).await;
    let sent_before = value(&baseline, BYTES_TOTAL, &upstream_bytes).unwrap();
    let echoed_before = value(&baseline, BYTES_TOTAL, &client_bytes).unwrap();
    let completed_before = value(
        &baseline,
        CONNECTIONS_TOTAL,
        &[("listener", listener), ("result", "completed")],
    )
    .unwrap();

    let data = payload();
    let reply = tokio::task::spawn_blocking({
        let data = data.clone();
        move || echo(published, &data)
    })
    .await
    .unwrap()
    .expect("echo through the published port");
    assert_eq!(reply.len(), data.len());
    assert!(reply == data, "echoed bytes differ from the sent bytes");

    let expected_sent = sent_before + PAYLOAD_BYTES as f64;
    let page = wait_for_value(metrics, BYTES_TOTAL, &upstream_bytes, expected_sent).await;
    assert_eq!(
        value(&page, BYTES_TOTAL, &client_bytes).unwrap(),
        echoed_before + PAYLOAD_BYTES as f64
    );
    assert_eq!(
        value(
            &page,
            CONNECTIONS_TOTAL,
            &[("listener", listener), ("result", "completed")]
        )
        .unwrap(),
        completed_before + 1.0
    );
    assert_eq!(value(&page, TASKS_RUNNING, &[]).unwrap(), 1.0);
    assert_eq!(
        value(&page, TASK_STARTS_TOTAL, &[("result", "started")]).unwrap(),
        1.0
    );
    assert!(
        value(
            &page,
            CONTAINER_CLI_CALLS_TOTAL,
            &[("command", "create"), ("result", "success")]
        )
        .unwrap()
            >= 1.0
    );
    let inspect_count = format!("{CONTAINER_CLI_DURATION_SECONDS}_count");
    assert!(value(&page, &inspect_count, &[("command", "inspect")]).unwrap() >= 1.0);
    let inspect_in_10_min = value(
        &page,
        &format!("{CONTAINER_CLI_DURATION_SECONDS}_bucket"),
        &[("command", "inspect"), ("le", "600")],
    )
    .unwrap();
    assert!(
        inspect_in_10_min >= 1.0,
        "the histogram has the set buckets"
    );

    // No label value names the allocation, the task ID or the container.
    let task_id = prepared.config.id.clone();
    for sample in &page {
        for label in sample.labels.values() {
            assert!(
                !label.contains(&spec.alloc_id) && !label.contains(&task_id),
                "{sample:?} has an ID in a label"
            );
        }
    }

    node.stop_and_wait(&task_id).await;
    let page = wait_for_value(metrics, TASKS_RUNNING, &[], 0.0).await;
    let exits: f64 = EXIT_RESULTS
        .iter()
        .map(|result| value(&page, TASK_EXITS_TOTAL, &[("result", result)]).unwrap())
        .sum();
    assert_eq!(exits, 1.0);

    node.destroy(&task_id).await;
    let page = samples(metrics).await;
    assert_eq!(value(&page, TASKS_RUNNING, &[]).unwrap(), 0.0);
}

#[tokio::test]
async fn destroy_without_stop_clears_gauge() {
    let node = Node::launch().await;
    let metrics = loopback_addr();
    node.configure(&metrics.to_string()).await.unwrap();

    let (_, prepared, _) = node.start_echo("echo").await;
    let page = samples(metrics).await;
    assert_eq!(value(&page, TASKS_RUNNING, &[]).unwrap(), 1.0);

    // Nomad destroys with force=true when it gives up on a task.
    node.destroy(&prepared.config.id).await;
    let page = samples(metrics).await;
    assert_eq!(value(&page, TASKS_RUNNING, &[]).unwrap(), 0.0);
}

#[tokio::test]
async fn relaunched_plugin_counts_recovery() {
    let mut node = Node::launch().await;
    let metrics = loopback_addr();
    node.configure(&metrics.to_string()).await.unwrap();
    let (_, prepared, response) = node.start_echo("echo").await;

    node.relaunch().await;
    node.configure(&metrics.to_string())
        .await
        .expect("the relaunched plugin binds the same address");
    let request = RecoverTaskRequest {
        task_id: String::new(),
        handle: response.handle.clone(),
    };
    node.plugin
        .driver()
        .recover_task(request)
        .await
        .expect("RecoverTask succeeds");

    let page = samples(metrics).await;
    assert_eq!(
        value(&page, TASK_RECOVERIES_TOTAL, &[("result", "running")]).unwrap(),
        1.0
    );
    assert_eq!(value(&page, TASKS_RUNNING, &[]).unwrap(), 1.0);
    assert_eq!(
        value(&page, TASK_STARTS_TOTAL, &[("result", "started")]).unwrap(),
        0.0,
        "a recovery is not a start"
    );

    // The recovered listener keeps the name of the first one.
    let published = published_addr(&response, "echo");
    tokio::task::spawn_blocking(move || wait_for_echo(published, HANG_TIMEOUT))
        .await
        .unwrap();
    let page = samples(metrics).await;
    let recovered_bytes = value(
        &page,
        BYTES_TOTAL,
        &[
            ("listener", "default/job/group/echo/echo"),
            ("direction", "client_to_upstream"),
        ],
    )
    .unwrap();
    assert!(
        recovered_bytes >= 4.0,
        "probe bytes counted: {recovered_bytes}"
    );

    node.destroy(&prepared.config.id).await;
}

#[tokio::test]
async fn occupied_address_rejected_by_name() {
    let node = Node::launch().await;
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let occupied = holder.local_addr().unwrap();

    let status = node.configure(&occupied.to_string()).await.unwrap_err();
    let message = status.message();
    assert!(message.contains(&occupied.to_string()), "{message}");
    assert!(message.contains("metrics_address"), "{message}");
    assert!(message.contains("in use"), "{message}");

    // A failed bind leaves no recorder behind, so a free address works afterwards.
    let free = loopback_addr();
    node.configure(&free.to_string())
        .await
        .expect("a free address after an occupied one");
    samples(free).await;
}

#[tokio::test]
async fn second_set_config_keeps_endpoint() {
    let node = Node::launch().await;
    let metrics = loopback_addr();
    node.configure(&metrics.to_string()).await.unwrap();

    node.configure(&metrics.to_string())
        .await
        .expect("the same address again changes nothing");

    let other = loopback_addr();
    let status = node.configure(&other.to_string()).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("cannot change"), "{status:?}");
    assert!(status.message().contains(&other.to_string()), "{status:?}");

    let status = node.configure("").await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);

    samples(metrics).await;
    let refused = TcpStream::connect_timeout(&other, Duration::from_secs(5)).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn empty_address_serves_nothing() {
    let node = Node::launch().await;
    let unused = loopback_addr();
    node.configure("").await.expect("empty metrics_address");
    node.start_echo("echo").await;

    let refused = TcpStream::connect_timeout(&unused, Duration::from_secs(5)).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

    // Turning the endpoint on later would miss the running task, so it is rejected.
    let status = node.configure(&unused.to_string()).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn validation_pass_binds_nothing() {
    let node = Node::launch().await;
    let metrics = loopback_addr();
    let mut options = plugin_options(&node.sim, false);
    options.push(("metrics_address", Value::string(&metrics.to_string())));
    let body = Value::object(options);
    let schema = node
        .plugin
        .base()
        .config_schema(ConfigSchemaRequest {})
        .await
        .unwrap()
        .into_inner()
        .spec
        .unwrap();

    // The agent's validation pass sends the config twice without the node config.
    for _ in 0..2 {
        let request = SetConfigRequest {
            msgpack_config: encode_with_spec(&schema, &body).unwrap(),
            nomad_config: None,
            plugin_api_version: "v0.1.0".to_owned(),
        };
        node.plugin
            .base()
            .set_config(request)
            .await
            .expect("validation pass accepted");
    }
    let refused = TcpStream::connect_timeout(&metrics, Duration::from_secs(5)).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

    node.configure(&metrics.to_string()).await.unwrap();
    samples(metrics).await;
}

//! Driver overhead of a task's start and stop, measured over the `container-sim`
//! simulator, so the figures leave out what a real VM boot and shutdown cost.
//!
//! - start→reachable: from the StartTask call until a TCP echo round trip through the
//!   task's published port succeeds.
//! - stop→destroyed: from the StopTask call through the WaitTask result until
//!   DestroyTask returns.
//!
//! Run with `cargo bench -p styx-tests --bench lifecycle_latency`; set
//! `LIFECYCLE_BENCH_ROUNDS` to change the 20 rounds.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use styx_driver::proto::drivers::{
    DestroyTaskRequest, StartTaskRequest, StopTaskRequest, TaskConfigSchemaRequest, WaitTaskRequest,
};
use styx_tests::cty::{Value, encode_with_spec};
use styx_tests::sim::{Simulator, launch_plugin};
use styx_tests::task::{Port, TaskSpec, free_port, prepare};

const PLUGIN: &str = env!("CARGO_BIN_EXE_styx-driver-under-test");
const SIMULATOR: &str = env!("CARGO_BIN_EXE_container-sim");

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::var("LIFECYCLE_BENCH_ROUNDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::new(Path::new(SIMULATOR), &dir.path().join("sim"));
    let plugin = launch_plugin(Path::new(PLUGIN), dir.path(), &sim, &[], false).await;
    let schema = plugin
        .driver()
        .task_config_schema(TaskConfigSchemaRequest {})
        .await
        .unwrap()
        .into_inner()
        .spec
        .unwrap();
    let body = Value::object([
        ("image", Value::string("styx/echo")),
        ("ports", Value::strings(&["echo"])),
    ]);

    let mut start_times = Vec::with_capacity(rounds);
    let mut stop_times = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let mut spec = TaskSpec::new(&format!("bench{round}"));
        spec.ports = vec![Port {
            label: "echo".to_owned(),
            value: free_port(),
            to: 7,
        }];
        let prepared = prepare(dir.path(), &spec, encode_with_spec(&schema, &body).unwrap());
        let id = prepared.config.id.clone();

        let started = Instant::now();
        let response = plugin
            .driver()
            .start_task(StartTaskRequest {
                task: Some(prepared.config.clone()),
            })
            .await
            .expect("StartTask succeeds")
            .into_inner();
        let network = response.network_override.unwrap();
        let addr = SocketAddr::new(
            network.addr.parse().unwrap(),
            u16::try_from(network.port_map["echo"]).unwrap(),
        );
        tokio::task::spawn_blocking(move || echo_until_ready(addr))
            .await
            .unwrap();
        start_times.push(started.elapsed());

        let stopping = Instant::now();
        plugin
            .driver()
            .stop_task(StopTaskRequest {
                task_id: id.clone(),
                timeout: Some(Duration::from_secs(5).try_into().unwrap()),
                signal: "SIGTERM".to_owned(),
            })
            .await
            .unwrap();
        plugin
            .driver()
            .wait_task(WaitTaskRequest {
                task_id: id.clone(),
            })
            .await
            .unwrap();
        plugin
            .driver()
            .destroy_task(DestroyTaskRequest {
                task_id: id,
                force: true,
            })
            .await
            .unwrap();
        stop_times.push(stopping.elapsed());
    }

    report("start→reachable", &mut start_times);
    report("stop→destroyed", &mut stop_times);
}

fn echo_until_ready(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = (|| -> std::io::Result<bool> {
            let mut stream = TcpStream::connect(addr)?;
            stream.write_all(b"x")?;
            let mut reply = [0u8; 1];
            Ok(stream.read(&mut reply)? == 1)
        })();
        if attempt.unwrap_or(false) {
            return;
        }
        assert!(Instant::now() < deadline, "no echo from {addr}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn report(name: &str, times: &mut [Duration]) {
    times.sort();
    let at = |share: f64| times[((times.len() - 1) as f64 * share).round() as usize];
    println!(
        "{name}: rounds {} median {:.1} ms p90 {:.1} ms max {:.1} ms",
        times.len(),
        at(0.5).as_secs_f64() * 1000.0,
        at(0.9).as_secs_f64() * 1000.0,
        at(1.0).as_secs_f64() * 1000.0,
    );
}

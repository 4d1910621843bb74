//! Starting the simulator's echo task and reaching it through the ports the driver
//! published for it, as a client on the node's network would.
//!
//! The helpers talk to the simulator's `styx/echo` image, which writes back every byte
//! it reads and closes once the client has half-closed. Tests of other images keep
//! their own helpers.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use styx_driver::proto::drivers::StartTaskResponse;

use crate::cty::Value;
use crate::nomad::Plugin;
use crate::rpc::start_task;
use crate::task::{Port, PreparedTask, TaskSpec, free_port};

/// Time a single exchange may take before it counts as failed.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts a `styx/echo` task named `name`, its folders under `root`, with the echo port
/// 7 published under the label `echo` on a free host port.
///
/// # Panics
/// When StartTask fails or does not return within `timeout`.
pub async fn start_echo_task(
    plugin: &Plugin,
    root: &Path,
    name: &str,
    timeout: Duration,
) -> (TaskSpec, PreparedTask, StartTaskResponse) {
    let mut spec = TaskSpec::new(name);
    spec.ports = vec![Port {
        label: "echo".to_owned(),
        value: free_port(),
        to: 7,
    }];
    let body = Value::object([
        ("image", Value::string("styx/echo")),
        ("ports", Value::strings(&["echo"])),
    ]);

    let (prepared, response) = start_task(plugin, root, &spec, &body, timeout).await;
    let response = response.expect("StartTask of the echo task succeeds");
    (spec, prepared, response)
}

/// Returns the address the driver published for the port labelled `label`.
///
/// # Panics
/// When StartTask returned no network override or no port under `label`.
pub fn published_addr(response: &StartTaskResponse, label: &str) -> SocketAddr {
    let network = response
        .network_override
        .as_ref()
        .expect("StartTask returned the driver network");
    let port = network
        .port_map
        .get(label)
        .unwrap_or_else(|| panic!("no published port labelled {label:?}"));
    let port = u16::try_from(*port).expect("published port fits in u16");
    SocketAddr::new(network.addr.parse().expect("driver address is an IP"), port)
}

/// Sends `payload` to the echo task at `addr`, half-closes, and returns what came back.
/// Returns the first I/O error without retrying.
pub fn echo(addr: SocketAddr, payload: &[u8]) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(EXCHANGE_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let payload = payload.to_vec();

    // Writing on its own thread keeps a large payload from filling both directions'
    // buffers while nothing reads.
    let sender = std::thread::spawn(move || -> io::Result<()> {
        writer.write_all(&payload)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut reply = Vec::new();
    let read = stream.read_to_end(&mut reply);

    sender.join().expect("sender thread ends")?;
    read?;
    Ok(reply)
}

/// Waits until the echo task at `addr` echoes a probe, retrying every 50 ms.
///
/// # Panics
/// When no probe came back within `timeout`.
pub fn wait_for_echo(addr: SocketAddr, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        match echo(addr, b"ping") {
            Ok(reply) if reply == b"ping" => return,
            other => {
                assert!(Instant::now() < deadline, "no echo from {addr}: {other:?}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

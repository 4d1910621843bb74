//! Proxy children and the whole `styx-proxy bench` run, with a Python forwarding stub in
//! place of `styx-proxy run`.
//!
//! The bench crate cannot depend on styx-proxy, so these tests give it an executable
//! script that accepts the same `run` flags and forwards on loopback. They check the child
//! lifecycle (ready, CPU readable, SIGTERM stop) and the CLI's output, not speed. They
//! skip with a note when `python3` is not on the PATH.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use clap::Parser;
use styx_bench::backend::Backend;
use styx_bench::cli::{BenchArgs, run};
use styx_bench::process::CpuProbe;
use styx_bench::proxy_child::{Engine, ProxyChild};
use styx_bench::request_response::{RequestLoad, run_request_response};

/// Forwards `--listen` to `--upstream` with two threads per connection, passes a FIN on as
/// a write shutdown, and exits on SIGTERM. Other flags are accepted and ignored.
const STUB_PROXY: &str = r#"#!/usr/bin/env python3
import signal, socket, sys, threading

flags = dict(zip(sys.argv[2::2], sys.argv[3::2]))

def address(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)

def pump(source, destination):
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            destination.sendall(data)
        destination.shutdown(socket.SHUT_WR)
    except OSError:
        pass

def serve(client):
    upstream = socket.create_connection(address(flags["--upstream"]))
    threading.Thread(target=pump, args=(upstream, client), daemon=True).start()
    pump(client, upstream)

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
listener = socket.create_server(address(flags["--listen"]))
while True:
    client, _ = listener.accept()
    threading.Thread(target=serve, args=(client,), daemon=True).start()
"#;

fn python_available() -> bool {
    let found = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !found {
        eprintln!("skipped: python3 is not on the PATH");
    }
    found
}

fn write_script(directory: &Path, name: &str, text: &str) -> PathBuf {
    let path = directory.join(name);
    std::fs::write(&path, text).expect("write the script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
        .expect("make the script executable");
    path
}

fn write_stub(directory: &Path) -> PathBuf {
    write_script(directory, "stub-styx-proxy", STUB_PROXY)
}

#[derive(Parser)]
struct BenchCommand {
    #[command(flatten)]
    bench: BenchArgs,
}

fn parse_bench_args(flags: &[&str]) -> BenchArgs {
    let argv = std::iter::once("bench").chain(flags.iter().copied());
    BenchCommand::try_parse_from(argv)
        .expect("flags parse")
        .bench
}

#[test]
fn child_ready_measured_and_stopped() {
    if !python_available() {
        return;
    }
    let directory = tempfile::tempdir().expect("temp dir");
    let stub = write_stub(directory.path());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let backend = {
        let _context = runtime.enter();
        Backend::start("127.0.0.1:0".parse().unwrap()).expect("backend binds")
    };

    let child =
        ProxyChild::start(&stub, Engine::Copy, backend.local_addr()).expect("stub child starts");
    let pid = child.pid();
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "child {pid} is not running"
    );

    let load = RequestLoad {
        warmup: Duration::from_millis(20),
        duration: Duration::from_millis(200),
    };
    let mut probe = CpuProbe::new(vec![pid]);
    let sample = run_request_response(child.listen_addr(), &load, &mut probe)
        .expect("round trips through the stub");
    assert!(sample.requests > 0);
    assert!(probe.cores().is_some(), "no CPU figure for the child");

    let listen: SocketAddr = child.listen_addr();
    child.stop().expect("the stub stops on SIGTERM");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "child {pid} still exists after stop"
    );
    assert!(
        TcpStream::connect_timeout(&listen, Duration::from_secs(1)).is_err(),
        "{listen} still accepts after stop"
    );
}

#[test]
fn cli_run_prints_json() {
    if !python_available() {
        return;
    }
    let directory = tempfile::tempdir().expect("temp dir");
    let stub = write_stub(directory.path());

    let args = parse_bench_args(&[
        "--quick",
        "--json",
        "--backend",
        "127.0.0.1:0",
        "--scenario",
        "rr-p50",
        "--engines",
        "copy",
    ]);

    run(args, &stub).expect("a bench run through the stub succeeds");
}

#[test]
fn cli_run_failing_proxy_errors() {
    let directory = tempfile::tempdir().expect("temp dir");
    let script = write_script(
        directory.path(),
        "broken-styx-proxy",
        "#!/bin/sh\necho 'unknown flag --engine' >&2\nexit 2\n",
    );
    let args = parse_bench_args(&[
        "--quick",
        "--backend",
        "127.0.0.1:0",
        "--scenario",
        "bulk-1",
    ]);

    let error = run(args, &script).expect_err("a proxy that exits cannot be measured");
    let message = error.to_string();
    assert!(message.contains("exited early"), "{message}");
    assert!(message.contains("unknown flag --engine"), "{message}");
}

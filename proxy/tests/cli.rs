//! The `styx-proxy` binary: argument and config errors, and a `run` child process that
//! forwards traffic and exits cleanly on SIGTERM.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use tokio::net::TcpStream;

fn styx_proxy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_styx-proxy"))
}

fn run_with(args: &[&str]) -> Output {
    styx_proxy()
        .arg("run")
        .args(args)
        .output()
        .expect("styx-proxy starts")
}

/// Checks that a failed run exited with code 2 and printed exactly one line that
/// contains every one of `needles`.
fn assert_one_line_error(output: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "stderr: {stderr}");
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{needle:?} missing from stderr: {stderr}"
        );
    }
}

fn write_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("styx-proxy-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn bad_listen_flag_named() {
    let output = run_with(&["--listen", "127.0.0.1", "--upstream", "127.0.0.1:1"]);
    assert_one_line_error(&output, &["--listen"]);
}

#[test]
fn bad_engine_flag_named() {
    let output = run_with(&[
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "127.0.0.1:1",
        "--engine",
        "zero",
    ]);
    assert_one_line_error(&output, &["--engine", "zero"]);
}

#[test]
fn zero_max_connections_named() {
    let output = run_with(&[
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "127.0.0.1:1",
        "--max-connections",
        "0",
    ]);
    assert_one_line_error(&output, &["--max-connections"]);
}

#[test]
fn unknown_flag_named() {
    let output = run_with(&[
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "127.0.0.1:1",
        "--speed",
        "9",
    ]);
    assert_one_line_error(&output, &["--speed"]);
}

#[test]
fn missing_upstream_named() {
    let output = run_with(&["--listen", "127.0.0.1:0"]);
    assert_one_line_error(&output, &["--upstream"]);
}

#[test]
fn config_bad_line_named() {
    let path = write_config(
        "bad-line.toml",
        "[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nupstream = [\"127.0.0.1:1\"]\nidle_timeout = 5\n",
    );
    let output = run_with(&["--config", path.to_str().unwrap()]);
    assert_one_line_error(&output, &[path.to_str().unwrap(), "line 5", "idle_timeout"]);
}

#[test]
fn config_missing_file_named() {
    let output = run_with(&["--config", "/nonexistent/styx-proxy.toml"]);
    assert_one_line_error(&output, &["/nonexistent/styx-proxy.toml"]);
}

#[test]
fn config_with_listen_flag_rejected() {
    let path = write_config("conflict.toml", "");
    let output = run_with(&[
        "--config",
        path.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "127.0.0.1:1",
    ]);
    assert_one_line_error(&output, &["--config"]);
}

#[test]
fn help_states_defaults() {
    let output = styx_proxy().args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    for needle in [
        "[default: 10000]",
        "[default: 5000]",
        "[default: 300]",
        "[default: auto",
        "milliseconds",
    ] {
        assert!(
            help.contains(needle),
            "{needle:?} missing from help:\n{help}"
        );
    }
}

/// Waits until `addr` accepts a connection.
async fn wait_listening(addr: std::net::SocketAddr) {
    within("the child to listen", async {
        while TcpStream::connect(addr).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_child_forwards_and_stops_on_sigterm() {
    let upstream = spawn_echo().await;
    let listen = closed_port();
    let metrics = closed_port();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_styx-proxy"))
        .args([
            "run",
            "--listen",
            &listen.to_string(),
            "--upstream",
            &upstream.to_string(),
        ])
        .args([
            "--engine",
            "splice",
            "--metrics-listen",
            &metrics.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("styx-proxy starts");
    wait_listening(listen).await;

    let mut client = TcpStream::connect(listen).await.unwrap();
    round_trip(&mut client, &pattern(9, 1 << 20)).await;
    drop(client);

    wait_listening(metrics).await;
    let mut stream = TcpStream::connect(metrics).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut page = String::new();
    within("the child's metrics", stream.read_to_string(&mut page))
        .await
        .unwrap();
    assert!(
        page.contains(styx_proxy::metrics::BYTES_TOTAL),
        "metrics page:\n{page}"
    );

    let pid = rustix::process::Pid::from_raw(child.id().expect("child is running") as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let output = within("the child to exit", child.wait_with_output())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}, stderr: {stderr}",
        output.status
    );
    assert!(stderr.contains("Drain finished"), "stderr: {stderr}");
}

/// Fetches the metrics page of a child proxy.
async fn scrape_child(metrics: std::net::SocketAddr) -> Vec<Sample> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(metrics).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    within("the child's metrics", stream.read_to_string(&mut response))
        .await
        .unwrap();
    let (_, body) = response
        .split_once("\r\n\r\n")
        .expect("response has a body");
    parse_samples(body)
}

/// With its open file limit at 40, the proxy runs out of descriptors: failed accepts
/// are counted and backed off (a few per second, not a busy loop), and service resumes
/// once clients leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fd_exhaustion_backs_off_and_recovers() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("skipped: prlimit (util-linux) is not installed");
        return;
    }
    let upstream = spawn_echo().await;
    let listen = closed_port();
    let metrics = closed_port();
    let child = tokio::process::Command::new("prlimit")
        .args([
            "--nofile=40:40",
            "--",
            env!("CARGO_BIN_EXE_styx-proxy"),
            "run",
        ])
        .args([
            "--listen",
            &listen.to_string(),
            "--upstream",
            &upstream.to_string(),
        ])
        .args(["--metrics-listen", &metrics.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("prlimit starts");
    // The proxy binds its listener after the metrics endpoint, so wait for the listener.
    wait_listening(listen).await;

    // More clients than 40 descriptors can serve. A client whose upstream connect
    // failed with EMFILE is reset, which can surface as the connect's own result.
    let mut clients = Vec::new();
    for _ in 0..40 {
        if let Ok(client) = TcpStream::connect(listen).await {
            clients.push(client);
        }
    }
    // The metrics endpoint cannot accept either while descriptors are exhausted, so
    // the failures are read after recovery.
    let exhausted = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    drop(clients);
    let mut client = within("a connection after recovery", async {
        loop {
            use tokio::io::AsyncWriteExt;
            let Ok(mut client) = TcpStream::connect(listen).await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            if client.write_all(b"x").await.is_ok() {
                let mut byte = [0u8; 1];
                use tokio::io::AsyncReadExt;
                if matches!(client.read(&mut byte).await, Ok(1)) {
                    return client;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    round_trip(&mut client, b"recovered").await;
    drop(client);
    let seconds = exhausted.elapsed().as_secs_f64();

    let samples = scrape_child(metrics).await;
    let fd_limit = [("reason", "fd_limit")];
    let failures = value(
        &samples,
        styx_proxy::metrics::ACCEPT_ERRORS_TOTAL,
        &fd_limit,
    )
    .unwrap_or(0.0);
    assert!(failures >= 1.0, "no accept failed with EMFILE");
    // The backoff starts at 5 ms and doubles up to 1 s, so a few seconds allow about a
    // dozen retries. A loop without backoff would fail thousands of times.
    assert!(
        failures <= 10.0 + 2.0 * seconds,
        "{failures} failed accepts in {seconds:.1} s"
    );

    let pid = rustix::process::Pid::from_raw(child.id().expect("child is running") as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let output = within("the child to exit", child.wait_with_output())
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

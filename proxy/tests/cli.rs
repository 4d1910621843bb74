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

/// Runs `styx-proxy run` with a valid listener and upstream plus `flag value`.
fn run_with_flag(flag: &str, value: &str) -> Output {
    run_with(&[
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "127.0.0.1:1",
        flag,
        value,
    ])
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
    let output = run_with_flag("--engine", "zero");
    assert_one_line_error(&output, &["--engine", "zero"]);
}

#[test]
fn zero_max_connections_named() {
    let output = run_with_flag("--max-connections", "0");
    assert_one_line_error(&output, &["--max-connections"]);
}

/// A negative number reaches the flag's own check instead of reading as an unknown flag.
#[test]
fn negative_numbers_named_as_invalid() {
    for flag in [
        "--max-connections",
        "--preconnect",
        "--connect-timeout-ms",
        "--idle-timeout-s",
        "--drain-timeout-s",
    ] {
        let output = run_with_flag(flag, "-1");
        assert_one_line_error(&output, &["invalid value '-1'", flag]);
    }
}

#[test]
fn zero_timeouts_say_minimum() {
    let cases = [
        ("--connect-timeout-ms", "must be at least 1 ms"),
        ("--preconnect-max-idle-s", "must be at least 1 s"),
    ];
    for (flag, message) in cases {
        let output = run_with_flag(flag, "0");
        assert_one_line_error(&output, &[flag, message]);
    }
    let output = run_with_flag("--connect-timeout-ms", "soon");
    assert_one_line_error(&output, &["--connect-timeout-ms", "whole number of ms"]);
}

#[test]
fn unknown_flag_named() {
    let output = run_with_flag("--speed", "9");
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
fn zero_upstream_port_named() {
    let output = run_with(&["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:0"]);
    assert_one_line_error(&output, &["--upstream", "127.0.0.1:0", "not 0"]);

    let path = write_config(
        "zero-port.toml",
        "[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nupstream = [\"127.0.0.1:0\"]\n",
    );
    let output = run_with(&["--config", path.to_str().unwrap()]);
    assert_one_line_error(&output, &[path.to_str().unwrap(), "line 4", "not 0"]);
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

/// Starts `styx-proxy run` forwarding `listen` to `upstream`, with `extra` flags after
/// those, its stderr piped for the test to read.
fn spawn_run_child(
    listen: std::net::SocketAddr,
    upstream: std::net::SocketAddr,
    extra: &[&str],
) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_styx-proxy"))
        .args(["run", "--listen", &listen.to_string()])
        .args(["--upstream", &upstream.to_string()])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("styx-proxy starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_child_forwards_and_stops_on_sigterm() {
    let upstream = spawn_echo().await;
    let listen = closed_port();
    let metrics = closed_port();
    let metrics_flag = metrics.to_string();
    let extra = ["--engine", "splice", "--metrics-listen", &metrics_flag];
    let child = spawn_run_child(listen, upstream, &extra);
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

    let output = terminate(child).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}, stderr: {stderr}",
        output.status
    );
    assert!(stderr.contains("Drain finished"), "stderr: {stderr}");
    // Piped stderr is not a terminal, so it gets no colour codes.
    assert!(!stderr.contains('\x1b'), "ANSI codes in stderr: {stderr}");
    assert!(
        stderr.contains(&format!("addr={listen}")),
        "bound address missing from stderr: {stderr}"
    );
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

/// Sends SIGTERM to `child` and returns its output once it exits.
async fn terminate(child: tokio::process::Child) -> std::process::Output {
    signal(&child, rustix::process::Signal::TERM);
    within("the child to exit", child.wait_with_output())
        .await
        .unwrap()
}

/// Sends `signal` to the running `child`.
fn signal(child: &tokio::process::Child, signal: rustix::process::Signal) {
    let id = child.id().expect("child is running");
    let pid = rustix::process::Pid::from_raw(id as i32).expect("a child's pid is positive");
    rustix::process::kill_process(pid, signal).unwrap();
}

/// Returns whether `prlimit` (util-linux) is missing, saying the test is skipped.
fn prlimit_missing() -> bool {
    let missing = Command::new("prlimit").arg("--version").output().is_err();
    if missing {
        eprintln!("skipped: prlimit (util-linux) is not installed");
    }
    missing
}

/// Opens up to `count` connections to `addr`, keeping those that connect.
async fn connect_clients(addr: std::net::SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut clients = Vec::new();
    for _ in 0..count {
        if let Ok(client) = TcpStream::connect(addr).await {
            clients.push(client);
        }
    }
    clients
}

/// Waits until the child has at least 39 of its 40 descriptors open. From there one
/// more accepted connection exhausts them, and none is freed while the test's
/// clients stay connected.
async fn wait_descriptors_exhausted(child: &tokio::process::Child) {
    // `prlimit` execs the proxy, so the child's pid is the proxy's.
    let fds = PathBuf::from(format!("/proc/{}/fd", child.id().expect("the child runs")));
    within("the child to use up its descriptors", async {
        loop {
            let open = std::fs::read_dir(&fds).map_or(0, Iterator::count);
            if open >= 39 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// A proxy limited to 40 open files, with every descriptor in use by the test's
/// clients.
struct ExhaustedProxy {
    child: tokio::process::Child,
    listen: std::net::SocketAddr,
    metrics: std::net::SocketAddr,
    clients: Vec<TcpStream>,
}

/// Starts a proxy limited to 40 open files and connects more clients than it can serve.
/// Returns once the proxy has used up its descriptors.
async fn exhaust_fd_limited_proxy() -> ExhaustedProxy {
    let upstream = spawn_echo().await;
    let (listen, metrics) = (closed_port(), closed_port());
    let child = spawn_fd_limited(listen, upstream, metrics);
    // The proxy binds its listener after the metrics endpoint, so wait for the listener.
    wait_listening(listen).await;

    // A client whose upstream connect failed with EMFILE is reset, which can surface as
    // the connect's own result.
    let clients = connect_clients(listen, 40).await;
    // On a busy machine the proxy may still be accepting those clients here.
    wait_descriptors_exhausted(&child).await;
    ExhaustedProxy {
        child,
        listen,
        metrics,
        clients,
    }
}

/// Starts `styx-proxy run` under `prlimit` with its open file limit at 40.
fn spawn_fd_limited(
    listen: std::net::SocketAddr,
    upstream: std::net::SocketAddr,
    metrics: std::net::SocketAddr,
) -> tokio::process::Child {
    tokio::process::Command::new("prlimit")
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
        .expect("prlimit starts")
}

/// With its open file limit at 40, the proxy runs out of descriptors: failed accepts
/// are counted and backed off (a few per second, not a busy loop), and service resumes
/// once clients leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fd_exhaustion_backs_off_and_recovers() {
    if prlimit_missing() {
        return;
    }
    let ExhaustedProxy {
        child,
        listen,
        metrics,
        clients,
    } = exhaust_fd_limited_proxy().await;
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
    let fd_limit = [("listener", "default"), ("reason", "fd_limit")];
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

    let output = terminate(child).await;
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// While descriptors are exhausted, pending scrapes make the metrics endpoint's accepts
/// fail with EMFILE: those failures are backed off like the listener's (a few log lines,
/// not millions), and a scrape succeeds once descriptors free up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_backs_off_at_fd_limit() {
    if prlimit_missing() {
        return;
    }
    // A scraper accepted before the descriptors ran out would be served and never fail,
    // so the scrapers connect only now.
    let ExhaustedProxy {
        child,
        metrics,
        clients,
        ..
    } = exhaust_fd_limited_proxy().await;
    // These wait in the metrics backlog, so each accept attempt fails with EMFILE.
    let scrapers = connect_clients(metrics, 3).await;
    let exhausted = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(scrapers);
    drop(clients);

    let samples = within("a scrape after recovery", async {
        loop {
            let page = tokio::time::timeout(Duration::from_secs(2), scrape_child(metrics)).await;
            if let Ok(samples) = page
                && !samples.is_empty()
            {
                return samples;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let seconds = exhausted.elapsed().as_secs_f64();
    let labels = [("listener", "metrics"), ("reason", "fd_limit")];
    let failures =
        value(&samples, styx_proxy::metrics::ACCEPT_ERRORS_TOTAL, &labels).expect("series exists");
    assert!(failures >= 1.0, "no metrics accept failed with EMFILE");
    assert!(
        failures <= 10.0 + 2.0 * seconds,
        "{failures} failed metrics accepts in {seconds:.1} s"
    );

    let output = terminate(child).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    // A spinning accept loop logged millions of lines in seconds.
    assert!(
        stderr.lines().count() < 100,
        "{} stderr lines:\n{stderr}",
        stderr.lines().count()
    );
}

/// A second SIGTERM during a long drain resets the open connection and the child exits
/// well before the drain timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_sigterm_cuts_drain_short() {
    use tokio::io::AsyncReadExt;

    let upstream = spawn_echo().await;
    let listen = closed_port();
    let child = spawn_run_child(listen, upstream, &["--drain-timeout-s", "600"]);
    wait_listening(listen).await;
    let mut client = TcpStream::connect(listen).await.unwrap();
    round_trip(&mut client, b"open during the drain").await;

    signal(&child, rustix::process::Signal::TERM);
    // The listener closes when the drain starts.
    within("the listener to close", async {
        while TcpStream::connect(listen).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // The open connection keeps the drain waiting, well inside the 600 s timeout.
    let output = terminate(child).await;

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}, stderr: {stderr}",
        output.status
    );
    assert!(
        stderr.contains("Received a second shutdown signal"),
        "stderr: {stderr}"
    );
    assert!(stderr.contains("cut_off=1"), "stderr: {stderr}");
    let mut rest = Vec::new();
    let read = within("the client to be reset", client.read_to_end(&mut rest)).await;
    assert!(read.is_err(), "client read {read:?} instead of a reset");
}

/// Connections that send nothing do not keep a scrape out: with 100 of them open, more
/// than the endpoint lets wait, a scrape is still served, and the oldest silent
/// connections are the ones closed to make room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_do_not_block_scrapes() {
    let upstream = spawn_echo().await;
    let listen = closed_port();
    let metrics = closed_port();
    let child = spawn_run_child(
        listen,
        upstream,
        &["--metrics-listen", &metrics.to_string()],
    );
    wait_listening(metrics).await;

    let mut silent = connect_clients(metrics, 100).await;
    assert_eq!(silent.len(), 100, "every silent connection was made");
    let samples = scrape_child(metrics).await;
    assert!(
        value(&samples, styx_proxy::metrics::OPEN_FDS, &[]).is_some(),
        "the scrape returned a metrics page"
    );

    use tokio::io::AsyncReadExt;
    let mut oldest = silent.remove(0);
    let mut byte = [0u8; 1];
    let read = within(
        "the oldest silent connection to close",
        oldest.read(&mut byte),
    )
    .await;
    assert!(
        matches!(read, Ok(0)) || read.is_err(),
        "the oldest silent connection is still open: {read:?}"
    );

    drop(silent);
    let output = terminate(child).await;
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

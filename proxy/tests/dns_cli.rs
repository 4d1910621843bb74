//! The `styx-proxy` binary with DNS: `resolve` output and exit codes against dnsmasq,
//! one-line errors for bad names, `--upstream` and `--dns` values, and a `run` child that
//! forwards to an upstream given by name.

mod common;
#[path = "../../dns/tests/support/mod.rs"]
mod dns_support;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{closed_port, within};
use dns_support::{Dnsmasq, Zone, dead_server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn styx_proxy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_styx-proxy"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("styx-proxy starts")
}

/// Runs `styx-proxy resolve NAME --dns consul=<dns>` with `extra` flags.
fn resolve(name: &str, dns: &Dnsmasq, extra: &[&str]) -> Output {
    let route = format!("consul={}", dns.addr);
    let mut args = vec!["resolve", name, "--dns", &route];
    args.extend_from_slice(extra);
    styx_proxy(&args)
}

fn stdout_lines(output: &Output) -> Vec<String> {
    let mut lines: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

/// Checks that the command exited with `code` and printed exactly one line on stderr that
/// contains every one of `needles`.
fn assert_one_line_error(output: &Output, code: i32, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "stderr: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "stderr: {stderr}");
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{needle:?} missing from stderr: {stderr}"
        );
    }
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
}

fn zone() -> Zone {
    Zone::new()
        .host("web.service.consul", "127.0.0.71")
        .host("web.service.consul", "127.0.0.72")
        .host("node73.node.consul", "127.0.0.73")
        .srv("api.service.consul", "node73.node.consul", 8073)
        .local("consul")
}

#[test]
fn resolve_prints_one_address_per_line() {
    let dns = Dnsmasq::start(&zone());
    let output = resolve("web.service.consul", &dns, &[]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(stdout_lines(&output), ["127.0.0.71", "127.0.0.72"]);
}

#[test]
fn resolve_srv_prints_records() {
    let dns = Dnsmasq::start(&zone());
    let output = resolve("api.service.consul", &dns, &["--type", "srv"]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(
        stdout_lines(&output),
        ["1 1 8073 node73.node.consul 127.0.0.73"]
    );
}

#[test]
fn resolve_json_lists_addresses() {
    let dns = Dnsmasq::start(&zone());
    let output = resolve("node73.node.consul", &dns, &["--json"]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains(r#""addresses":["127.0.0.73"]"#), "{stdout}");
}

#[test]
fn resolve_missing_name_fails() {
    let dns = Dnsmasq::start(&zone());
    let output = resolve("missing.service.consul", &dns, &[]);
    assert_one_line_error(&output, 1, &["missing.service.consul", "does not exist"]);
    assert!(output.stdout.is_empty());

    let output = resolve("node73.node.consul", &dns, &["--type", "aaaa"]);
    assert_one_line_error(&output, 1, &["node73.node.consul", "has no AAAA records"]);
}

#[test]
fn resolve_dead_server_fails() {
    let route = format!("consul={}", dead_server());
    let output = styx_proxy(&["resolve", "web.service.consul", "--dns", &route]);
    assert_one_line_error(
        &output,
        1,
        &["web.service.consul", "no upstream server answered"],
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn resolve_bad_input_one_line() {
    let cases: [(&[&str], &[&str]); 5] = [
        (&["resolve", ""], &["invalid name", "empty"]),
        (
            &["resolve", "bad_label!.consul"],
            &["invalid name", "bad_label!"],
        ),
        (
            &["resolve", "x.consul", "--dns", "consul"],
            &["--dns", "expected SUFFIX=IP[:PORT]"],
        ),
        (
            &["resolve", "x.consul", "--dns", "consul=localhost:53"],
            &["--dns", "\"localhost:53\" is not IP[:PORT]"],
        ),
        (&["resolve", "x.consul", "--type", "mx"], &["--type", "mx"]),
    ];
    for (args, needles) in cases {
        assert_one_line_error(&styx_proxy(args), 2, needles);
    }
}

#[test]
fn run_bad_upstream_or_dns_one_line() {
    let run = ["run", "--listen", "127.0.0.1:0"];
    let cases: [(&[&str], &[&str]); 4] = [
        (
            &["--upstream", "web.service.consul"],
            &["--upstream", "expected IP:PORT, NAME:PORT or srv:NAME"],
        ),
        (
            &["--upstream", "web.service.consul:0"],
            &["--upstream", "port \"0\""],
        ),
        (
            &["--upstream", "srv:bad name.consul"],
            &["--upstream", "bad name"],
        ),
        (
            &[
                "--upstream",
                "web.service.consul:80",
                "--dns",
                "consul=127.0.0.1:99999",
            ],
            &["--dns", "is not IP[:PORT]"],
        ),
    ];
    for (args, needles) in cases {
        let argv: Vec<&str> = run.iter().chain(args).copied().collect();
        assert_one_line_error(&styx_proxy(&argv), 2, needles);
    }
}

#[test]
fn run_config_bad_dns_names_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let text = "engine = \"copy\"\n\
                dns = [\"consul=127.0.0.1:8600\",\n       \"ts.net\"]\n\
                [[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\
                upstream = [\"web.service.consul:80\"]\n";
    std::fs::write(&path, text).unwrap();

    let output = styx_proxy(&["run", "--config", path.to_str().unwrap()]);
    assert_one_line_error(
        &output,
        2,
        &["line 3", "\"ts.net\"", "expected SUFFIX=IP[:PORT]"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_child_forwards_by_name() {
    // The upstream writes a greeting, so the client sees that the name led somewhere.
    let upstream = TcpListener::bind("127.0.0.74:0").await.unwrap();
    let port = upstream.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = upstream.accept().await {
            let _ = stream.write_all(b"hello from 127.0.0.74").await;
            let _ = stream.shutdown().await;
        }
    });
    let dns = Dnsmasq::start(
        &Zone::new()
            .host("app.service.consul", "127.0.0.74")
            .local("consul"),
    );

    let listen = closed_port();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_styx-proxy"))
        .args(["run", "--listen", &listen.to_string()])
        .args(["--upstream", &format!("app.service.consul:{port}")])
        .args(["--dns", &format!("consul={}", dns.addr)])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("styx-proxy starts");

    within("the child to listen", async {
        while TcpStream::connect(listen).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let mut client = TcpStream::connect(listen).await.unwrap();
    let mut reply = String::new();
    within("the reply", client.read_to_string(&mut reply))
        .await
        .unwrap();
    assert_eq!(reply, "hello from 127.0.0.74");
    // Closing the client ends the connection, so the drain has nothing to wait for.
    drop(client);

    let pid = rustix::process::Pid::from_raw(child.id().expect("child is running") as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let output = within("the child to exit", child.wait_with_output())
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
}

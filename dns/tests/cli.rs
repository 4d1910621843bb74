//! `styx_dns::cli::run`, the `resolve` subcommand, against dnsmasq: output format and errors.

mod support;

use clap::Parser;
use styx_dns::cli::{ResolveArgs, run};
use support::{Dnsmasq, SilentServer, TAILNET, Zone, trace_init};

#[derive(Parser)]
struct Command {
    #[command(flatten)]
    args: ResolveArgs,
}

/// Parses `argv` after routing every suffix of the default routes to `server`, so no query
/// leaves loopback.
fn args(server: std::net::SocketAddr, argv: &[&str]) -> ResolveArgs {
    let routes = [
        format!("consul={server}"),
        format!("ts.net={server}"),
        format!(".={server}"),
    ];
    let mut full = vec!["resolve".to_owned()];
    full.extend(argv.iter().map(|a| (*a).to_owned()));
    for route in routes {
        full.push("--dns".to_owned());
        full.push(route);
    }
    Command::try_parse_from(full).expect("valid arguments").args
}

#[tokio::test]
async fn prints_one_address_per_line() {
    trace_init();
    let server = Dnsmasq::start(&Zone::consul().merge(Zone::magicdns()));

    let output = run(&args(server.addr, &["web.service.consul"]))
        .await
        .unwrap();
    let mut lines: Vec<&str> = output.lines().collect();
    lines.sort();
    assert_eq!(lines, ["10.0.0.1", "10.0.0.2"]);
    assert!(output.ends_with('\n'));

    let name = format!("mac-a.{TAILNET}");
    let output = run(&args(server.addr, &[&name, "--type", "aaaa"]))
        .await
        .unwrap();
    assert_eq!(output, "fd7a:115c:a1e0::1\n");
}

#[tokio::test]
async fn prints_srv_with_addresses() {
    trace_init();
    let server = Dnsmasq::start(&Zone::consul());

    let output = run(&args(server.addr, &["web.service.consul", "--type", "srv"]))
        .await
        .unwrap();
    let mut lines: Vec<&str> = output.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "1 1 8080 node1.node.consul 10.0.1.1 fd00::1",
            "1 1 8081 node2.node.consul 10.0.1.2"
        ]
    );
}

#[tokio::test]
async fn prints_json() {
    trace_init();
    let server = Dnsmasq::start(&Zone::consul());

    let output = run(&args(server.addr, &["node2.node.consul", "--json"]))
        .await
        .unwrap();
    let value: serde_json::Value = serde_json::from_str(&output).unwrap();
    assert_eq!(value["name"], "node2.node.consul");
    assert_eq!(value["type"], "a");
    assert_eq!(value["addresses"], serde_json::json!(["10.0.1.2"]));

    let output = run(&args(
        server.addr,
        &["web.service.consul", "--type", "srv", "--json"],
    ))
    .await
    .unwrap();
    let value: serde_json::Value = serde_json::from_str(&output).unwrap();
    let records = value["records"].as_array().unwrap();
    assert_eq!(records.len(), 2);
    assert!(
        records
            .iter()
            .any(|r| r["port"] == 8081 && r["target"] == "node2.node.consul")
    );
    assert!(
        records
            .iter()
            .all(|r| r["priority"] == 1 && r["weight"] == 1)
    );
}

#[tokio::test]
async fn missing_name_error_names_it() {
    trace_init();
    let server = Dnsmasq::start(&Zone::consul());

    let error = run(&args(server.addr, &["nope.service.consul"]))
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "nope.service.consul does not exist (NXDOMAIN)"
    );

    let error = run(&args(server.addr, &["node2.node.consul", "--type", "aaaa"]))
        .await
        .unwrap_err();
    assert_eq!(error.to_string(), "node2.node.consul has no AAAA records");
}

#[tokio::test]
async fn unreachable_error_names_servers() {
    trace_init();
    let silent = SilentServer::start();

    let error = run(&args(
        silent.addr,
        &["web.service.consul", "--timeout-ms", "100"],
    ))
    .await
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "failed to resolve web.service.consul: no upstream server answered ({} timed out)",
            silent.addr
        )
    );
}

#[tokio::test]
async fn bad_names_rejected() {
    let silent = SilentServer::start();
    let cases = [
        ("", "invalid name: the name is empty"),
        ("web..consul", "empty label"),
        ("web_ok.bad!.consul", "label \"bad!\" may contain only"),
    ];
    for (name, expected) in cases {
        let error = run(&args(silent.addr, &[name]))
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains(expected), "{name:?}: {error}");
        assert!(!error.contains('\n'), "one line: {error}");
    }
    assert_eq!(
        silent.received(),
        0,
        "bad names are rejected before any query"
    );
}

#[tokio::test]
async fn ip_literal_printed_without_query() {
    let silent = SilentServer::start();
    let cases = [
        (&["127.0.0.1"][..], "127.0.0.1\n"),
        (&["::1", "--type", "aaaa"][..], "::1\n"),
        (&["[::1]", "--type", "aaaa"][..], "::1\n"),
    ];
    for (argv, expected) in cases {
        let output = run(&args(silent.addr, argv)).await.unwrap();
        assert_eq!(output, expected, "{argv:?}");
    }

    let error = run(&args(silent.addr, &["127.0.0.1", "--type", "srv"]))
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        "invalid name \"127.0.0.1\": SRV lookups need a service name, not an IP address"
    );
    assert_eq!(silent.received(), 0, "IP literals send no query");
}

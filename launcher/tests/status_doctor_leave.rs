//! `styx status` against fake Nomad and Consul HTTPS APIs on loopback, `styx doctor`
//! on fake programs, and `styx leave` / `styx uninstall` on a `--no-start` setup.

mod common;

use std::fs;
use std::path::Path;

use common::{Fakes, closed_port_url, fake_api, run, set_endpoints, stdout};

fn init(fakes: &Fakes, prefix: &Path) {
    let output = run(fakes.styx(prefix).args(["init", "--no-start"]));
    assert!(output.status.success());
}

#[test]
fn status_reports_cluster_and_down_items() {
    let fakes = Fakes::healthy();
    fakes.output_for(
        "launchctl",
        "print",
        "gui/501/dev.styx.nomad = {\n\tstate = running\n\tpid = 4242\n}\n",
        0,
    );
    let home = tempfile::tempdir().unwrap();
    let prefix = home.path().join("styx");
    init(&fakes, &prefix);

    let (nomad, _) = fake_api(
        &prefix,
        "nomad",
        vec![
            ("GET /v1/status/leader", "\"100.101.102.103:4647\"".to_owned()),
            ("GET /v1/agent/members", r#"{"Members":[{"Name":"mac-one.global","Status":"alive"}]}"#.to_owned()),
            (
                "GET /v1/nodes",
                r#"[{"Name":"mac-one","Status":"ready","Drivers":{"apple-container":{"Detected":true,"Healthy":true}}},
                   {"Name":"mac-two","Status":"down","Drivers":{}},
                   {"Name":"mac-three","Status":"ready","Drivers":{"apple-container":{"Healthy":false,"HealthDescription":"container system service is not running"}}}]"#
                    .to_owned(),
            ),
        ],
        &["GET /v1/nodes"],
    );
    let (consul, _) = fake_api(
        &prefix,
        "consul",
        vec![
            (
                "GET /v1/status/leader",
                "\"100.101.102.103:8300\"".to_owned(),
            ),
            (
                "GET /v1/agent/members",
                r#"[{"Name":"mac-one","Status":1},{"Name":"mac-two","Status":4}]"#.to_owned(),
            ),
        ],
        &[],
    );
    set_endpoints(&prefix, &nomad, &consul, &closed_port_url());

    let output = run(fakes.styx(&prefix).args(["status", "--json"]));

    assert_eq!(output.status.code(), Some(1), "something is down");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let item = |name: &str| {
        report["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|item| item["name"] == name)
            .unwrap_or_else(|| panic!("item {name} missing from {report}"))
            .clone()
    };
    assert_eq!(item("agent nomad")["up"], true);
    assert_eq!(item("agent nomad")["detail"], "running, pid 4242");
    assert_eq!(item("nomad leader")["detail"], "100.101.102.103:4647");
    assert_eq!(item("nomad server mac-one.global")["up"], true);
    assert_eq!(item("nomad node mac-one")["up"], true);
    assert_eq!(
        item("nomad node mac-one")["detail"],
        "ready, driver apple-container healthy"
    );
    assert_eq!(item("nomad node mac-two")["up"], false);
    assert_eq!(item("nomad node mac-three")["up"], false);
    assert!(
        item("nomad node mac-three")["detail"]
            .as_str()
            .unwrap()
            .contains("container system service is not running")
    );
    assert_eq!(item("consul leader")["up"], true);
    assert_eq!(item("consul member mac-one")["up"], true);
    assert_eq!(item("consul member mac-two")["detail"], "failed");
    assert_eq!(item("vault")["up"], false);
    assert!(
        item("vault")["detail"]
            .as_str()
            .unwrap()
            .contains("failed to connect")
    );
    let vault_detail = item("vault")["detail"].as_str().unwrap().to_owned();
    assert!(
        vault_detail.to_lowercase().contains("refused"),
        "the OS error is part of the line: {vault_detail}"
    );
}

#[test]
fn status_without_setup_names_the_fix() {
    let fakes = Fakes::healthy();
    let home = tempfile::tempdir().unwrap();

    let output = run(fakes.styx(&home.path().join("none")).arg("status"));

    assert_eq!(output.status.code(), Some(3));
    assert!(common::stderr(&output).contains("run `styx init` or `styx join` first"));
}

#[test]
fn doctor_healthy_mac_passes_checks() {
    let fakes = Fakes::healthy();
    let home = tempfile::tempdir().unwrap();
    let prefix = home.path().join("styx");
    init(&fakes, &prefix);
    let system = home.path().join("system");
    fs::create_dir_all(system.join("etc/resolver")).unwrap();
    fs::write(
        system.join("etc/resolver/consul"),
        "nameserver 127.0.0.1\nport 8600\n",
    )
    .unwrap();

    let output = run(fakes
        .styx(&prefix)
        .arg("--system-root")
        .arg(&system)
        .args(["doctor", "--json"]));

    let checks: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    let level = |name: &str| {
        checks
            .iter()
            .find(|check| check["name"] == name)
            .unwrap_or_else(|| panic!("check {name} missing"))["level"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    for name in [
        "macOS version",
        "Apple silicon",
        "container installed",
        "container service",
        "Tailscale up",
        "Tailscale exit node",
        "nomad installed",
        "consul installed",
        "vault installed",
        "launchd file limit",
        "/etc/resolver/consul",
    ] {
        assert_eq!(level(name), "OK", "{name}");
    }
    assert_eq!(level("Local Network access"), "WARN");
}

#[test]
fn doctor_reports_failures_with_fixes() {
    let fakes = Fakes::healthy();
    fakes.output("sw_vers", "14.6\n");
    fakes.output("uname", "x86_64\n");
    fakes.output_for("container", "system", "apiserver is not running\n", 1);
    fakes.output("nomad", "Nomad v1.5.0\n");
    fakes.remove("consul");
    fakes.output(
        "tailscale",
        &common::RUNNING_STATUS.replace(
            "\"Health\": [],",
            "\"Health\": [], \"ExitNodeStatus\": {\"ID\": \"nEXIT\", \"Online\": true},",
        ),
    );
    let home = tempfile::tempdir().unwrap();
    let system = home.path().join("system");
    fs::create_dir_all(system.join("etc/resolver")).unwrap();
    fs::write(
        system.join("etc/resolver/consul"),
        "nameserver 127.0.0.1\nport 8600\nsearch consul\n",
    )
    .unwrap();

    let output = run(fakes
        .styx(&home.path().join("styx"))
        .arg("--system-root")
        .arg(&system)
        .arg("doctor"));

    assert_eq!(output.status.code(), Some(1));
    let text = stdout(&output);
    let line_of = |name: &str| {
        text.lines()
            .find(|line| line.contains(name))
            .unwrap_or_else(|| panic!("no line for {name} in:\n{text}"))
            .to_owned()
    };
    assert!(line_of("macOS version").starts_with("FAIL"));
    assert!(line_of("Apple silicon").starts_with("FAIL"));
    assert!(line_of("container service").starts_with("FAIL"));
    assert!(text.contains("fix: container system start"), "{text}");
    assert!(line_of("Tailscale exit node").starts_with("WARN"));
    assert!(text.contains("fix: tailscale set --exit-node="), "{text}");
    assert!(line_of("nomad installed").contains("1.7.0 or newer is needed"));
    assert!(line_of("consul installed").starts_with("FAIL"));
    assert!(
        text.contains("fix: brew install hashicorp/tap/consul"),
        "{text}"
    );
    assert!(line_of("/etc/resolver/consul").starts_with("FAIL"));
    assert!(line_of("launchd file limit").contains("default soft limit is 256"));
}

#[test]
fn doctor_warns_on_tailscale_health() {
    let fakes = Fakes::healthy();
    fakes.output(
        "tailscale",
        &common::RUNNING_STATUS.replace(
            "\"Health\": [],",
            "\"Health\": [\"not connected to home DERP region 1\"],",
        ),
    );
    let home = tempfile::tempdir().unwrap();

    let output = run(fakes
        .styx(&home.path().join("styx"))
        .args(["doctor", "--json"]));

    let checks: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    let up = checks
        .iter()
        .find(|check| check["name"] == "Tailscale up")
        .unwrap();
    assert_eq!(up["level"], "WARN");
    assert!(
        up["detail"]
            .as_str()
            .unwrap()
            .contains("not connected to home DERP region 1")
    );
}

#[test]
fn doctor_finds_tailscale_only_listener() {
    // A second loopback address plays the Tailscale address, so the listener is bound
    // only there and 127.0.0.1:9464 stays free.
    let tailscale_ip = "127.0.0.2";
    let Ok(_listener) = std::net::TcpListener::bind((tailscale_ip, 9464)) else {
        eprintln!("skipped: {tailscale_ip}:9464 is not available to bind on this machine");
        return;
    };
    let fakes = Fakes::healthy();
    fakes.output(
        "tailscale",
        &common::RUNNING_STATUS.replace(common::TAILSCALE_IP, tailscale_ip),
    );
    let home = tempfile::tempdir().unwrap();

    let output = run(fakes
        .styx(&home.path().join("styx"))
        .args(["doctor", "--json"]));

    let checks: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    let ports = checks
        .iter()
        .find(|check| check["name"] == "ports")
        .unwrap();
    assert_eq!(ports["level"], "FAIL");
    let detail = ports["detail"].as_str().unwrap();
    assert!(detail.contains("127.0.0.2:9464"), "{detail}");
    assert!(!detail.contains("127.0.0.1:9464"), "{detail}");
}

#[test]
fn leave_drains_and_keeps_data() {
    let fakes = Fakes::healthy();
    let home = tempfile::tempdir().unwrap();
    let prefix = home.path().join("styx");
    init(&fakes, &prefix);
    fakes.output_for("launchctl", "print", "state = running\n", 0);

    let output = run(fakes.styx(&prefix).arg("leave"));

    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    for service in ["nomad", "vault", "consul"] {
        let plist = prefix.join(format!("LaunchAgents/dev.styx.{service}.plist"));
        let line = format!("{service}: stopped, removed {}\n", plist.display());
        assert!(stdout.contains(&line), "{line} missing from {stdout}");
    }
    let calls = fakes.calls();
    let uid = rustix::process::getuid().as_raw();
    assert!(
        calls.contains(&"nomad node drain -self -enable -yes -deadline 5m".to_owned()),
        "{calls:?}"
    );
    assert!(calls.contains(&"consul leave".to_owned()), "{calls:?}");
    for service in ["nomad", "vault", "consul"] {
        let bootout = format!("launchctl bootout gui/{uid}/dev.styx.{service}");
        assert!(calls.contains(&bootout), "{bootout} missing from {calls:?}");
        assert!(
            !prefix
                .join(format!("LaunchAgents/dev.styx.{service}.plist"))
                .exists()
        );
    }
    let drain = calls
        .iter()
        .position(|call| call.starts_with("nomad node drain"))
        .unwrap();
    let first_bootout = calls
        .iter()
        .position(|call| call.starts_with("launchctl bootout"))
        .unwrap();
    assert!(
        drain < first_bootout,
        "the node drains before its agents stop"
    );
    assert!(
        prefix.join("tls/ca.pem").is_file(),
        "data is kept without --purge"
    );
}

#[test]
fn uninstall_purge_removes_everything() {
    let fakes = Fakes::healthy();
    let home = tempfile::tempdir().unwrap();
    let prefix = home.path().join("styx");
    init(&fakes, &prefix);

    let output = run(fakes.styx(&prefix).args(["uninstall", "--purge"]));

    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    for service in ["nomad", "vault", "consul"] {
        assert!(
            stdout.contains(&format!("{service}: not loaded, removed ")),
            "{stdout}"
        );
    }
    let calls = fakes.calls();
    assert!(
        !calls
            .iter()
            .any(|call| call.starts_with("nomad node drain")),
        "{calls:?}"
    );
    assert!(!prefix.exists());
}

#[test]
fn leave_lines_match_failure_summary() {
    let fakes = Fakes::healthy();
    let home = tempfile::tempdir().unwrap();
    let prefix = home.path().join("styx");
    init(&fakes, &prefix);
    fakes.remove("launchctl");

    let output = run(fakes.styx(&prefix).arg("uninstall"));

    assert_eq!(output.status.code(), Some(3));
    let text = stdout(&output);
    for service in ["nomad", "vault", "consul"] {
        let line = text
            .lines()
            .find(|line| line.starts_with(&format!("{service}: ")))
            .unwrap_or_else(|| panic!("no line for {service} in:\n{text}"));
        assert!(
            line.contains("failed to stop (launchctl not found on PATH: it is a macOS tool"),
            "{line}"
        );
        assert!(
            line.ends_with(&format!(
                "removed {}",
                prefix
                    .join(format!("LaunchAgents/dev.styx.{service}.plist"))
                    .display()
            )),
            "{line}"
        );
    }
    let summary = common::stderr(&output);
    assert!(
        summary.contains("failed to stop or remove the nomad, vault, consul agent(s)"),
        "{summary}"
    );
    assert!(summary.contains("was kept"), "{summary}");
    assert!(prefix.join("styx.toml").is_file());
}

#[test]
fn status_without_launchctl_names_macos() {
    let fakes = Fakes::healthy();
    let home = tempfile::tempdir().unwrap();
    let prefix = home.path().join("styx");
    init(&fakes, &prefix);
    fakes.remove("launchctl");
    // Every API points at a closed loopback port, so status contacts no other address.
    let closed = closed_port_url();
    set_endpoints(&prefix, &closed, &closed, &closed);

    let output = run(fakes.styx(&prefix).args(["status", "--json"]));

    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for service in ["consul", "vault", "nomad"] {
        let item = report["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|item| item["name"] == format!("agent {service}"))
            .unwrap_or_else(|| panic!("agent {service} missing from {report}"));
        assert_eq!(item["up"], false);
        assert_eq!(
            item["detail"],
            "launchctl not found on PATH: it is a macOS tool, so run styx on macOS"
        );
    }
}

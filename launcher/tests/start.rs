//! Starting the services (`styx start`, and `styx init` without `--no-start`) against a
//! fake `launchctl` and fake Consul, Vault and Nomad HTTPS APIs on loopback.

mod common;

use std::fs;

use common::{Fakes, closed_port_url, fake_api, mode, run, set_endpoints, stderr};

const VAULT_INIT_REPLY: &str =
    r#"{"keys":["abcd"],"keys_base64":["q80="],"root_token":"hvs.test-root"}"#;

#[test]
fn start_loads_agents_and_initialises_vault() {
    let fakes = Fakes::healthy();
    let home = tempfile::tempdir().unwrap();
    let prefix = home.path().join("styx");
    assert!(
        run(fakes.styx(&prefix).args(["init", "--no-start"]))
            .status
            .success()
    );
    let vault_requests = fake_cluster(
        &prefix,
        vec![
            (
                "GET /v1/sys/health",
                r#"{"initialized":false,"sealed":true}"#.to_owned(),
            ),
            ("GET /v1/sys/init", r#"{"initialized":false}"#.to_owned()),
            ("PUT /v1/sys/init", VAULT_INIT_REPLY.to_owned()),
            ("PUT /v1/sys/unseal", r#"{"sealed":false}"#.to_owned()),
        ],
    );

    let output = run(fakes.styx(&prefix).arg("start"));

    assert!(output.status.success());
    let uid = rustix::process::getuid().as_raw();
    let bootstraps: Vec<String> = fakes
        .calls()
        .into_iter()
        .filter(|call| call.starts_with("launchctl bootstrap"))
        .collect();
    let expected: Vec<String> = ["consul", "vault", "nomad"]
        .iter()
        .map(|service| {
            let plist = prefix.join(format!("LaunchAgents/dev.styx.{service}.plist"));
            format!("launchctl bootstrap gui/{uid} {}", plist.display())
        })
        .collect();
    assert_eq!(
        bootstraps, expected,
        "agents load in order consul, vault, nomad"
    );

    let init_file = prefix.join("secrets/vault-init.json");
    assert_eq!(mode(&init_file), 0o600);
    let saved: serde_json::Value = serde_json::from_slice(&fs::read(&init_file).unwrap()).unwrap();
    assert_eq!(saved["root_token"], "hvs.test-root");
    let requests = vault_requests.lock().unwrap().clone();
    assert!(
        requests
            .contains(&r#"PUT /v1/sys/init {"secret_shares":1,"secret_threshold":1}"#.to_owned()),
        "{requests:?}"
    );
    assert!(
        requests.contains(&r#"PUT /v1/sys/unseal {"key":"q80="}"#.to_owned()),
        "{requests:?}"
    );
}

#[test]
fn start_skips_initialised_vault() {
    let fakes = Fakes::healthy();
    let home = tempfile::tempdir().unwrap();
    let prefix = home.path().join("styx");
    assert!(
        run(fakes.styx(&prefix).args(["init", "--no-start"]))
            .status
            .success()
    );
    let vault_requests = fake_cluster(
        &prefix,
        vec![
            (
                "GET /v1/sys/health",
                r#"{"initialized":true,"sealed":false}"#.to_owned(),
            ),
            ("GET /v1/sys/init", r#"{"initialized":true}"#.to_owned()),
        ],
    );

    let output = run(fakes.styx(&prefix).arg("start"));

    assert!(output.status.success());
    assert!(!prefix.join("secrets/vault-init.json").exists());
    let requests = vault_requests.lock().unwrap().clone();
    assert!(
        !requests.iter().any(|request| request.starts_with("PUT")),
        "{requests:?}"
    );
}

#[test]
fn init_start_failure_says_what_remains() {
    let fakes = Fakes::healthy();
    fakes.output_for("launchctl", "bootstrap", "", 5);
    fakes.error_for(
        "launchctl",
        "bootstrap",
        "Bootstrap failed: 5: Input/output error\n",
    );
    let home = tempfile::tempdir().unwrap();
    let prefix = home.path().join("styx");

    let output = run(fakes.styx(&prefix).arg("init"));

    assert_eq!(output.status.code(), Some(3));
    let message = stderr(&output);
    assert!(message.contains("the setup is in place at"), "{message}");
    assert!(message.contains("failed to start consul"), "{message}");
    assert!(
        message.contains("Bootstrap failed: 5: Input/output error"),
        "{message}"
    );
    assert!(message.contains("run `styx start`"), "{message}");
    assert!(
        prefix.join("consul/consul.hcl").is_file(),
        "the written setup stays in place"
    );
    let calls = fakes.calls();
    assert!(
        !calls
            .iter()
            .any(|call| call.contains("dev.styx.nomad.plist")),
        "{calls:?}"
    );
}

#[test]
fn start_unhealthy_consul_is_reported() {
    let fakes = Fakes::healthy();
    let home = tempfile::tempdir().unwrap();
    let prefix = home.path().join("styx");
    assert!(
        run(fakes.styx(&prefix).args(["init", "--no-start"]))
            .status
            .success()
    );
    let (consul, _) = fake_api(
        &prefix,
        "consul",
        vec![("GET /v1/status/leader", "\"\"".to_owned())],
        &[],
    );
    set_endpoints(&prefix, &closed_port_url(), &consul, &closed_port_url());

    let output = run(fakes
        .styx(&prefix)
        .args(["start", "--health-timeout", "2s"]));

    assert_eq!(output.status.code(), Some(3));
    let message = stderr(&output);
    assert!(
        message.contains("consul did not become healthy within 2 s"),
        "{message}"
    );
    assert!(message.contains("Consul has no leader yet"), "{message}");
}

/// Starts fake Consul and Nomad APIs that report a leader and a ready node, and a fake
/// Vault API with `vault_routes`, then points the setup at `prefix` to them. Returns
/// Vault's request log.
fn fake_cluster(
    prefix: &std::path::Path,
    vault_routes: Vec<(&'static str, String)>,
) -> common::RequestLog {
    let (consul, _) = fake_api(
        prefix,
        "consul",
        vec![(
            "GET /v1/status/leader",
            "\"100.101.102.103:8300\"".to_owned(),
        )],
        &[],
    );
    let (vault, vault_requests) = fake_api(prefix, "vault", vault_routes, &[]);
    let (nomad, _) = fake_api(
        prefix,
        "nomad",
        vec![
            (
                "GET /v1/status/leader",
                "\"100.101.102.103:4647\"".to_owned(),
            ),
            (
                "GET /v1/nodes",
                r#"[{"Name":"mac-one","Status":"ready"}]"#.to_owned(),
            ),
        ],
        &[],
    );
    set_endpoints(prefix, &nomad, &consul, &vault);
    vault_requests
}

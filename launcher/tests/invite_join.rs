//! `styx invite` and `styx join` end to end on loopback. The right token works once,
//! and the invite exits once every use is spent. A wrong secret, an expired token, a
//! token whose uses are spent and a pin that does not match each fail with a clear
//! message, and nothing is written on the joiner.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{Fakes, TAILSCALE_IP, entries, mode, run, stderr};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};

/// Stops a test whose `styx invite` hangs; generous for a busy machine.
const HANG_TIMEOUT: Duration = Duration::from_secs(30);

/// A server node set up with `init --no-start` and a running `styx invite`.
struct Server {
    fakes: Fakes,
    home: tempfile::TempDir,
    invite: Child,
    token: String,
}

impl Server {
    fn start(ttl: &str, uses: &str) -> Self {
        let fakes = Fakes::healthy();
        let home = tempfile::tempdir().unwrap();
        let output = run(fakes
            .styx(&home.path().join("server"))
            .args(["init", "--no-start"]));
        assert!(output.status.success());

        let mut invite = fakes
            .styx(&home.path().join("server"))
            .args([
                "invite",
                "--listen",
                "127.0.0.1:0",
                "--ttl",
                ttl,
                "--uses",
                uses,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = invite.stdout.take().unwrap();
        let mut token = None;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            eprintln!("invite: {line}");
            if let Some(rest) = line.trim().strip_prefix("styx join ") {
                token = Some(rest.to_owned());
                break;
            }
        }

        Self {
            fakes,
            home,
            invite,
            token: token.expect("styx invite printed a join line"),
        }
    }

    fn prefix(&self) -> PathBuf {
        self.home.path().join("server")
    }

    fn joiner(&self, name: &str) -> PathBuf {
        self.home.path().join(name)
    }

    /// Waits for `styx invite` to exit, and fails the test after `HANG_TIMEOUT`.
    fn wait_for_exit(&mut self) -> ExitStatus {
        let started = Instant::now();
        while started.elapsed() < HANG_TIMEOUT {
            if let Some(status) = self.invite.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("styx invite still running {HANG_TIMEOUT:?} after its last use");
    }

    fn join(&self, name: &str, token: &str) -> std::process::Output {
        run(self.fakes.styx(&self.joiner(name)).args([
            "join",
            "--no-start",
            "--node-name",
            name,
            token,
        ]))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.invite.kill();
        let _ = self.invite.wait();
    }
}

/// Decodes a token, applies `change` to its JSON and encodes it again.
fn altered(token: &str, change: impl FnOnce(&mut serde_json::Value)) -> String {
    let body = token.strip_prefix("styx1.").unwrap();
    let mut json: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).unwrap()).unwrap();
    change(&mut json);
    format!(
        "styx1.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&json).unwrap())
    )
}

fn assert_nothing_written(path: &Path) {
    assert!(!path.exists(), "{} must not exist", path.display());
    let parent = path.parent().unwrap();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let leftovers: Vec<String> = entries(parent)
        .into_iter()
        .filter(|entry| entry.starts_with(&name))
        .collect();
    assert!(leftovers.is_empty(), "leftovers: {leftovers:?}");
}

#[test]
fn join_with_valid_token_writes_client() {
    let server = Server::start("2m", "1");

    let output = server.join("mac-two", &server.token);

    assert!(output.status.success());
    let client = server.joiner("mac-two");
    let server_ca = fs::read(server.prefix().join("tls/ca.pem")).unwrap();
    assert_eq!(fs::read(client.join("tls/ca.pem")).unwrap(), server_ca);
    assert_eq!(mode(&client.join("tls/node-key.pem")), 0o600);
    assert_eq!(mode(&client.join("secrets/consul-gossip.key")), 0o600);
    assert!(
        !client.join("tls/ca-key.pem").exists(),
        "the CA key never leaves the server"
    );
    assert!(!client.join("vault").exists(), "clients run no Vault");

    let ca = CertificateDer::from_pem_slice(&server_ca).unwrap();
    let leaf = CertificateDer::from_pem_file(client.join("tls/node.pem")).unwrap();
    let anchor = webpki::anchor_from_trusted_cert(&ca).unwrap();
    let end_entity = webpki::EndEntityCert::try_from(&leaf).unwrap();
    for usage in [
        webpki::KeyUsage::client_auth(),
        webpki::KeyUsage::server_auth(),
    ] {
        end_entity
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                std::slice::from_ref(&anchor),
                &[],
                UnixTime::now(),
                usage,
                None,
                None,
            )
            .unwrap();
    }
    for name in [
        "client.global.nomad",
        "client.dc1.consul",
        "localhost",
        "127.0.0.1",
    ] {
        let server_name = rustls::pki_types::ServerName::try_from(name).unwrap();
        assert!(
            end_entity
                .verify_is_valid_for_subject_name(&server_name)
                .is_ok(),
            "node.pem must name {name}"
        );
    }
    let server_name = rustls::pki_types::ServerName::try_from("server.global.nomad").unwrap();
    assert!(
        end_entity
            .verify_is_valid_for_subject_name(&server_name)
            .is_err(),
        "a client must not get a server name"
    );

    let consul: hcl::Body =
        hcl::from_str(&fs::read_to_string(client.join("consul/consul.hcl")).unwrap()).unwrap();
    let server_key = fs::read_to_string(server.prefix().join("secrets/consul-gossip.key")).unwrap();
    let attribute = |body: &hcl::Body, key: &str| {
        body.attributes()
            .find(|a| a.key() == key)
            .unwrap()
            .expr()
            .clone()
    };
    assert_eq!(
        attribute(&consul, "encrypt"),
        hcl::Expression::String(server_key)
    );
    assert_eq!(attribute(&consul, "server"), hcl::Expression::Bool(false));
    assert_eq!(
        attribute(&consul, "retry_join"),
        hcl::Expression::Array(vec![hcl::Expression::String(TAILSCALE_IP.to_owned())])
    );

    let nomad: hcl::Body =
        hcl::from_str(&fs::read_to_string(client.join("nomad/nomad.hcl")).unwrap()).unwrap();
    assert!(
        nomad.blocks().all(|block| block.identifier() != "server"),
        "clients run no Nomad server"
    );
    let client_block = nomad
        .blocks()
        .find(|block| block.identifier() == "client")
        .unwrap();
    assert_eq!(
        attribute(client_block.body(), "servers"),
        hcl::Expression::Array(vec![hcl::Expression::String(format!(
            "{TAILSCALE_IP}:4647"
        ))])
    );

    let plists = entries(&client.join("LaunchAgents"));
    assert_eq!(plists, ["dev.styx.consul.plist", "dev.styx.nomad.plist"]);
}

#[test]
fn invite_exits_after_last_use() {
    let mut server = Server::start("2m", "1");
    let first = server.join("mac-two", &server.token);
    assert!(first.status.success());

    let status = server.wait_for_exit();
    let second = server.join("mac-three", &server.token);

    assert_eq!(
        status.code(),
        Some(0),
        "invite exits 0 once its use is spent"
    );
    assert_eq!(second.status.code(), Some(3));
    let message = stderr(&second);
    assert!(
        message.contains("failed to reach the invite endpoint"),
        "{message}"
    );
    assert!(message.contains("nothing was written"), "{message}");
    assert_nothing_written(&server.joiner("mac-three"));
}

#[test]
fn join_two_uses_allows_two_nodes() {
    let mut server = Server::start("2m", "2");

    let first = server.join("mac-two", &server.token);
    assert!(first.status.success());
    assert_eq!(
        server.invite.try_wait().unwrap(),
        None,
        "invite keeps serving while a use is left"
    );
    let second = server.join("mac-three", &server.token);
    let status = server.wait_for_exit();
    let third = server.join("mac-four", &server.token);

    assert!(second.status.success());
    assert_eq!(status.code(), Some(0));
    assert!(
        stderr(&third).contains("failed to reach the invite endpoint"),
        "{}",
        stderr(&third)
    );
    assert_nothing_written(&server.joiner("mac-four"));
}

#[test]
fn join_wrong_secret_rejected() {
    let server = Server::start("2m", "1");
    let token = altered(&server.token, |json| {
        json["secret"] = URL_SAFE_NO_PAD.encode([9u8; 32]).into();
    });

    let output = server.join("mac-two", &token);

    assert_eq!(output.status.code(), Some(3));
    let message = stderr(&output);
    assert!(message.contains("wrong secret"), "{message}");
    assert!(message.contains("nothing was written"), "{message}");
    assert_nothing_written(&server.joiner("mac-two"));

    let retry = server.join("mac-two", &server.token);
    assert!(
        retry.status.success(),
        "a rejected attempt must not consume the use"
    );
}

#[test]
fn join_pin_mismatch_rejected() {
    let server = Server::start("2m", "1");
    let token = altered(&server.token, |json| {
        json["ca_sha256"] = "00".repeat(32).into();
    });

    let output = server.join("mac-two", &token);

    assert_eq!(output.status.code(), Some(3));
    let message = stderr(&output);
    assert!(message.contains("does not match the token"), "{message}");
    assert!(
        message.contains(&format!("expected SHA-256 {}", "00".repeat(32))),
        "{message}"
    );
    assert!(message.contains("nothing was written"), "{message}");
    assert_nothing_written(&server.joiner("mac-two"));
}

#[test]
fn join_expired_token_rejected() {
    let server = Server::start("1s", "1");
    std::thread::sleep(std::time::Duration::from_millis(1500));

    let output = server.join("mac-two", &server.token);

    assert_eq!(output.status.code(), Some(3));
    let message = stderr(&output);
    assert!(message.contains("the invite token expired at"), "{message}");
    assert!(message.contains("nothing was written"), "{message}");
    assert_nothing_written(&server.joiner("mac-two"));
}

#[test]
fn join_truncated_token_rejected() {
    let server = Server::start("2m", "1");
    let truncated = &server.token[..server.token.len() - 10];

    let output = server.join("mac-two", truncated);

    assert_eq!(output.status.code(), Some(3));
    assert!(
        stderr(&output).contains("invalid invite token"),
        "{}",
        stderr(&output)
    );
    assert_nothing_written(&server.joiner("mac-two"));
}

#[test]
fn invite_on_client_node_rejected() {
    let server = Server::start("2m", "1");
    let joined = server.join("mac-two", &server.token);
    assert!(joined.status.success());

    let output = run(server.fakes.styx(&server.joiner("mac-two")).args([
        "invite",
        "--listen",
        "127.0.0.1:0",
    ]));

    assert_eq!(output.status.code(), Some(3));
    assert!(
        stderr(&output).contains("runs on the server node"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn doctor_on_client_skips_vault() {
    let server = Server::start("2m", "1");
    assert!(server.join("mac-two", &server.token).status.success());
    server.fakes.remove("vault");

    let output = run(server
        .fakes
        .styx(&server.joiner("mac-two"))
        .args(["doctor", "--json"]));

    let checks: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    let vault = checks
        .iter()
        .find(|check| check["name"] == "vault installed")
        .unwrap();
    assert_eq!(vault["level"], "OK");
    assert_eq!(vault["detail"], "not needed on a client node");
}

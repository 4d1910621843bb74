//! `styx init --no-start` on fakes: the files it writes, their modes, and the cases where
//! it must write nothing.

mod common;

use std::fs;
use std::path::Path;

use base64::Engine;
use common::{Fakes, TAILSCALE_IP, TAILSCALE_NAME, entries, mode, run, stderr};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::extensions::GeneralName;

fn init(fakes: &Fakes, prefix: &Path, extra: &[&str]) -> std::process::Output {
    run(fakes.styx(prefix).arg("init").arg("--no-start").args(extra))
}

fn parse_hcl(path: &Path) -> hcl::Body {
    hcl::from_str(&fs::read_to_string(path).unwrap())
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn attribute<'a>(body: &'a hcl::Body, key: &str) -> &'a hcl::Expression {
    body.attributes()
        .find(|attribute| attribute.key() == key)
        .map(|attribute| attribute.expr())
        .unwrap_or_else(|| panic!("attribute {key} is missing"))
}

fn block<'a>(body: &'a hcl::Body, identifier: &str) -> &'a hcl::Body {
    body.blocks()
        .find(|block| block.identifier() == identifier)
        .map(|block| block.body())
        .unwrap_or_else(|| panic!("block {identifier} is missing"))
}

fn string(expression: &hcl::Expression) -> String {
    match expression {
        hcl::Expression::String(text) => text.clone(),
        other => panic!("expected a string, found {other:?}"),
    }
}

fn der(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).unwrap()
}

/// Verifies `leaf` against the CA for `usage` and returns its DNS and IP SANs.
fn verify_leaf(prefix: &Path, name: &str, usage: webpki::KeyUsage) -> (Vec<String>, Vec<String>) {
    let ca = der(&prefix.join("tls/ca.pem"));
    let leaf = der(&prefix.join(format!("tls/{name}.pem")));
    let anchor = webpki::anchor_from_trusted_cert(&ca).unwrap();
    let end_entity = webpki::EndEntityCert::try_from(&leaf).unwrap();
    end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            UnixTime::now(),
            usage,
            None,
            None,
        )
        .unwrap_or_else(|error| panic!("{name}.pem does not verify: {error:?}"));

    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let sans = cert
        .subject_alternative_name()
        .unwrap()
        .expect("SANs present");
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    for general_name in &sans.value.general_names {
        match general_name {
            GeneralName::DNSName(name) => dns.push((*name).to_owned()),
            GeneralName::IPAddress(bytes) if bytes.len() == 4 => {
                ips.push(
                    std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).to_string(),
                );
            }
            _ => {}
        }
    }
    let key_usage = cert.key_usage().unwrap().expect("key usage present");
    assert!(
        key_usage.value.digital_signature(),
        "{name}: digitalSignature"
    );
    (dns, ips)
}

fn eku(prefix: &Path, name: &str) -> (bool, bool) {
    let leaf = der(&prefix.join(format!("tls/{name}.pem")));
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let eku = cert
        .extended_key_usage()
        .unwrap()
        .expect("extended key usage present");
    (eku.value.server_auth, eku.value.client_auth)
}

#[test]
fn init_writes_parseable_configs() {
    let fakes = Fakes::healthy();
    let home = tempfile::tempdir().unwrap();
    let prefix = home.path().join("styx");

    let output = init(&fakes, &prefix, &[]);

    assert!(output.status.success());
    let nomad = parse_hcl(&prefix.join("nomad/nomad.hcl"));
    assert_eq!(string(attribute(&nomad, "bind_addr")), TAILSCALE_IP);
    assert_eq!(string(attribute(&nomad, "name")), "mac-one");
    let tls = block(&nomad, "tls");
    for key in [
        "http",
        "rpc",
        "verify_server_hostname",
        "verify_https_client",
    ] {
        assert_eq!(
            attribute(tls, key),
            &hcl::Expression::Bool(true),
            "nomad tls.{key}"
        );
    }
    let server = block(&nomad, "server");
    let nomad_key = fs::read_to_string(prefix.join("secrets/nomad-gossip.key")).unwrap();
    assert_eq!(string(attribute(server, "encrypt")), nomad_key);
    let plugin = nomad
        .blocks()
        .find(|block| block.identifier() == "plugin")
        .expect("plugin block");
    assert_eq!(plugin.labels()[0].as_str(), "apple-container");
    let config = block(plugin.body(), "config");
    assert_eq!(
        attribute(config, "port_offset"),
        &hcl::Expression::Number(10000.into())
    );
    assert_eq!(string(attribute(config, "bind_address")), "tailscale");
    assert_eq!(
        attribute(config, "preconnect_pool_size"),
        &hcl::Expression::Number(0.into())
    );
    assert_eq!(
        string(attribute(config, "metrics_address")),
        format!("{TAILSCALE_IP}:9464")
    );
    assert_eq!(string(attribute(config, "stats_interval")), "5s");
    assert!(string(attribute(config, "container_path")).ends_with("/container"));
    let telemetry = block(&nomad, "telemetry");
    assert_eq!(
        attribute(telemetry, "prometheus_metrics"),
        &hcl::Expression::Bool(true)
    );

    let consul = parse_hcl(&prefix.join("consul/consul.hcl"));
    let consul_key = fs::read_to_string(prefix.join("secrets/consul-gossip.key")).unwrap();
    assert_eq!(string(attribute(&consul, "encrypt")), consul_key);
    assert_eq!(string(attribute(&consul, "client_addr")), "127.0.0.1");
    assert_eq!(string(attribute(&consul, "bind_addr")), TAILSCALE_IP);
    let consul_ports = block(&consul, "ports");
    assert_eq!(
        attribute(consul_ports, "dns"),
        &hcl::Expression::Number(8600.into())
    );
    assert_eq!(
        attribute(consul_ports, "http"),
        &hcl::Expression::Number((-1).into())
    );
    let defaults = block(block(&consul, "tls"), "defaults");
    assert_eq!(
        attribute(defaults, "verify_incoming"),
        &hcl::Expression::Bool(true)
    );
    assert_eq!(
        attribute(block(&consul, "dns_config"), "enable_truncate"),
        &hcl::Expression::Bool(true)
    );

    let vault = parse_hcl(&prefix.join("vault/vault.hcl"));
    let listeners: Vec<_> = vault
        .blocks()
        .filter(|block| block.identifier() == "listener")
        .collect();
    assert_eq!(listeners.len(), 2);
    let addresses: Vec<String> = listeners
        .iter()
        .map(|listener| string(attribute(listener.body(), "address")))
        .collect();
    assert_eq!(
        addresses,
        ["127.0.0.1:8200".to_owned(), format!("{TAILSCALE_IP}:8200")]
    );
    for listener in &listeners {
        assert!(string(attribute(listener.body(), "tls_cert_file")).ends_with("tls/vault.pem"));
    }
    assert_eq!(
        attribute(&vault, "disable_mlock"),
        &hcl::Expression::Bool(true)
    );
}

#[test]
fn init_never_binds_wildcard() {
    let fakes = Fakes::healthy();
    let home = tempfile::tempdir().unwrap();
    let prefix = home.path().join("styx");

    init(&fakes, &prefix, &[]);

    for config in ["nomad/nomad.hcl", "consul/consul.hcl", "vault/vault.hcl"] {
        let text = fs::read_to_string(prefix.join(config)).unwrap();
        assert!(!text.contains("0.0.0.0"), "{config} binds 0.0.0.0");
    }
}

#[test]
fn init_writes_launchd_plists() {
    let fakes = Fakes::healthy();
    let home = tempfile::tempdir().unwrap();
    let prefix = home.path().join("styx");

    init(&fakes, &prefix, &[]);

    for service in ["consul", "vault", "nomad"] {
        let path = prefix.join(format!("LaunchAgents/dev.styx.{service}.plist"));
        let value = plist::Value::from_file(&path).unwrap();
        let dict = value.as_dictionary().unwrap();
        assert_eq!(
            dict["Label"].as_string(),
            Some(format!("dev.styx.{service}").as_str())
        );
        assert_eq!(dict["KeepAlive"].as_boolean(), Some(true));
        assert_eq!(dict["RunAtLoad"].as_boolean(), Some(true));
        for limits in ["SoftResourceLimits", "HardResourceLimits"] {
            let files = dict[limits].as_dictionary().unwrap()["NumberOfFiles"]
                .as_signed_integer()
                .unwrap();
            assert!(
                files >= 10_240,
                "{service} {limits} NumberOfFiles = {files}"
            );
        }
        let arguments: Vec<&str> = dict["ProgramArguments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|value| value.as_string().unwrap())
            .collect();
        assert_eq!(Path::new(arguments[0]), fakes.bin().join(service));
        assert!(
            arguments
                .last()
                .unwrap()
                .ends_with(&format!("{service}/{service}.hcl"))
        );
        let log = dict["StandardErrorPath"].as_string().unwrap();
        assert!(log.ends_with(&format!("logs/{service}.log")), "{log}");
        assert_eq!(mode(&path), 0o644);
    }
}

#[test]
fn init_certificates_verify_with_sans() {
    let fakes = Fakes::healthy();
    let home = tempfile::tempdir().unwrap();
    let prefix = home.path().join("styx");

    init(&fakes, &prefix, &["--region", "eu", "--datacenter", "home"]);

    let expected_ips = vec!["127.0.0.1".to_owned(), TAILSCALE_IP.to_owned()];
    let cases: [(&str, &str, bool, bool); 4] = [
        ("nomad", "server.eu.nomad", true, true),
        ("consul", "server.home.consul", true, true),
        ("vault", "vault.service.consul", true, false),
        ("cli", "cli.eu.nomad", false, true),
    ];
    for (name, role_name, server_auth, client_auth) in cases {
        let usage = if server_auth {
            webpki::KeyUsage::server_auth()
        } else {
            webpki::KeyUsage::client_auth()
        };
        let (dns, ips) = verify_leaf(&prefix, name, usage);
        assert!(dns.contains(&role_name.to_owned()), "{name}: {dns:?}");
        assert!(dns.contains(&"localhost".to_owned()), "{name}: {dns:?}");
        assert!(dns.contains(&TAILSCALE_NAME.to_owned()), "{name}: {dns:?}");
        assert_eq!(ips, expected_ips, "{name}");
        assert_eq!(
            eku(&prefix, name),
            (server_auth, client_auth),
            "{name} extended key usage"
        );
    }

    let nomad = der(&prefix.join("tls/nomad.pem"));
    let end_entity = webpki::EndEntityCert::try_from(&nomad).unwrap();
    for name in [
        "server.eu.nomad",
        "client.eu.nomad",
        "localhost",
        "127.0.0.1",
        TAILSCALE_IP,
    ] {
        let server_name = ServerName::try_from(name).unwrap();
        assert!(
            end_entity
                .verify_is_valid_for_subject_name(&server_name)
                .is_ok(),
            "nomad.pem must be valid for {name}"
        );
    }

    let ca = der(&prefix.join("tls/ca.pem"));
    let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca).unwrap();
    let constraints = ca_cert
        .basic_constraints()
        .unwrap()
        .expect("basic constraints");
    assert!(constraints.value.ca);
    assert!(ca_cert.key_usage().unwrap().unwrap().value.key_cert_sign());
}

#[test]
fn init_gossip_keys_are_32_bytes() {
    let fakes = Fakes::healthy();
    let home = tempfile::tempdir().unwrap();
    let prefix = home.path().join("styx");

    init(&fakes, &prefix, &[]);

    let consul = fs::read_to_string(prefix.join("secrets/consul-gossip.key")).unwrap();
    let nomad = fs::read_to_string(prefix.join("secrets/nomad-gossip.key")).unwrap();
    for key in [&consul, &nomad] {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .unwrap();
        assert_eq!(bytes.len(), 32);
    }
    assert_ne!(consul, nomad, "Consul and Nomad get separate keys");
}

#[test]
fn init_sets_private_modes() {
    let fakes = Fakes::healthy();
    let home = tempfile::tempdir().unwrap();
    let prefix = home.path().join("styx");

    init(&fakes, &prefix, &[]);

    for dir in [
        "",
        "tls",
        "secrets",
        "nomad",
        "nomad/data",
        "consul/data",
        "vault/data",
        "logs",
        "LaunchAgents",
    ] {
        assert_eq!(mode(&prefix.join(dir)), 0o700, "directory {dir:?}");
    }
    for secret in [
        "tls/ca-key.pem",
        "tls/nomad-key.pem",
        "tls/consul-key.pem",
        "tls/vault-key.pem",
        "tls/cli-key.pem",
        "secrets/consul-gossip.key",
        "secrets/nomad-gossip.key",
        "nomad/nomad.hcl",
        "consul/consul.hcl",
        "vault/vault.hcl",
        "styx.toml",
    ] {
        assert_eq!(mode(&prefix.join(secret)), 0o600, "{secret}");
    }
    assert_eq!(mode(&prefix.join("tls/ca.pem")), 0o644);
    assert_eq!(
        entries(home.path()),
        ["styx"],
        "no staging or backup directory may remain"
    );
}

#[test]
fn init_no_start_runs_no_launchctl() {
    let fakes = Fakes::healthy();
    let home = tempfile::tempdir().unwrap();
    let prefix = home.path().join("styx");

    init(&fakes, &prefix, &[]);

    let calls = fakes.calls();
    assert!(
        calls.iter().any(|call| call == "tailscale status --json"),
        "{calls:?}"
    );
    assert!(
        !calls.iter().any(|call| call.starts_with("launchctl")),
        "{calls:?}"
    );
    assert!(
        !calls.iter().any(|call| call.starts_with("vault")),
        "{calls:?}"
    );
}

#[test]
fn init_no_start_says_start_initialises_vault() {
    let fakes = Fakes::healthy();
    let home = tempfile::tempdir().unwrap();
    let prefix = home.path().join("styx");

    let output = init(&fakes, &prefix, &[]);

    let stdout = String::from_utf8(output.stdout).unwrap();
    let vault_init = prefix.join("secrets").join("vault-init.json");
    assert!(!vault_init.exists());
    assert!(
        !stdout.contains("Vault's unseal key and root token:"),
        "{stdout}"
    );
    assert!(stdout.contains("`styx start` initialises it"), "{stdout}");
    assert!(
        stdout.contains(&vault_init.display().to_string()),
        "{stdout}"
    );
}

#[test]
fn init_refuses_existing_setup() {
    let fakes = Fakes::healthy();
    let home = tempfile::tempdir().unwrap();
    let prefix = home.path().join("styx");
    init(&fakes, &prefix, &[]);
    let ca_before = fs::read(prefix.join("tls/ca.pem")).unwrap();

    let output = init(&fakes, &prefix, &[]);

    assert_eq!(output.status.code(), Some(3));
    assert!(
        stderr(&output).contains("pass --force"),
        "{}",
        stderr(&output)
    );
    assert_eq!(fs::read(prefix.join("tls/ca.pem")).unwrap(), ca_before);
    assert_eq!(entries(home.path()), ["styx"]);
}

#[test]
fn init_force_backs_up_first() {
    let fakes = Fakes::healthy();
    let home = tempfile::tempdir().unwrap();
    let prefix = home.path().join("styx");
    init(&fakes, &prefix, &[]);
    let ca_before = fs::read(prefix.join("tls/ca.pem")).unwrap();

    let output = init(&fakes, &prefix, &["--force"]);

    assert!(output.status.success());
    let names = entries(home.path());
    assert_eq!(names.len(), 2, "{names:?}");
    let backup = home.path().join(&names[1]);
    assert!(names[1].starts_with("styx.backup-"), "{names:?}");
    assert_eq!(fs::read(backup.join("tls/ca.pem")).unwrap(), ca_before);
    assert!(backup.join("LaunchAgents/dev.styx.nomad.plist").is_file());
    assert_ne!(
        fs::read(prefix.join("tls/ca.pem")).unwrap(),
        ca_before,
        "a new CA was made"
    );
    assert_eq!(mode(&backup), 0o700);
}

#[test]
fn init_rejects_foreign_folder() {
    let fakes = Fakes::healthy();
    let home = tempfile::tempdir().unwrap();
    let prefix = home.path().join("notes");
    fs::create_dir(&prefix).unwrap();
    fs::write(prefix.join("notes.txt"), "mine").unwrap();

    for extra in [&[][..], &["--force"][..]] {
        let output = init(&fakes, &prefix, extra);

        assert_eq!(output.status.code(), Some(3), "{extra:?}");
        let message = stderr(&output);
        assert!(
            message.contains("a directory that contains notes.txt but no styx.toml"),
            "{message}"
        );
        assert!(message.contains("choose another --prefix"), "{message}");
        assert!(!message.contains("pass --force"), "{message}");
        assert_eq!(entries(home.path()), ["notes"], "nothing moved aside");
        assert_eq!(entries(&prefix), ["notes.txt"]);
    }
}

#[test]
fn init_rejects_plain_file() {
    let fakes = Fakes::healthy();
    let home = tempfile::tempdir().unwrap();
    let prefix = home.path().join("styx");
    fs::write(&prefix, "mine").unwrap();

    let output = init(&fakes, &prefix, &["--force"]);

    assert_eq!(output.status.code(), Some(3));
    let message = stderr(&output);
    assert!(
        message.contains("is not a Styx setup because it is a file"),
        "{message}"
    );
    assert_eq!(entries(home.path()), ["styx"]);
    assert_eq!(fs::read_to_string(&prefix).unwrap(), "mine");
}

#[test]
fn init_uses_empty_folder() {
    let fakes = Fakes::healthy();
    let home = tempfile::tempdir().unwrap();
    let prefix = home.path().join("styx");
    fs::create_dir(&prefix).unwrap();

    let output = init(&fakes, &prefix, &[]);

    assert!(output.status.success());
    assert!(prefix.join("styx.toml").is_file());
    assert_eq!(
        entries(home.path()),
        ["styx"],
        "no backup of an empty folder"
    );
}

#[test]
fn init_without_tailscale_writes_nothing() {
    let fakes = Fakes::healthy();
    fakes.remove("tailscale");
    let home = tempfile::tempdir().unwrap();
    let prefix = home.path().join("styx");

    let output = init(&fakes, &prefix, &[]);

    assert_eq!(output.status.code(), Some(3));
    assert!(
        stderr(&output).contains("tailscale not found on PATH"),
        "{}",
        stderr(&output)
    );
    assert!(entries(home.path()).is_empty());
}

#[test]
fn init_with_stopped_tailscale_writes_nothing() {
    let fakes = Fakes::healthy();
    fakes.output(
        "tailscale",
        r#"{"BackendState": "Stopped", "TailscaleIPs": null, "Self": {"TailscaleIPs": null}}"#,
    );
    let home = tempfile::tempdir().unwrap();
    let prefix = home.path().join("styx");

    let output = init(&fakes, &prefix, &[]);

    assert_eq!(output.status.code(), Some(3));
    let message = stderr(&output);
    assert!(
        message.contains("Tailscale is not running (state: Stopped)"),
        "{message}"
    );
    assert!(message.contains("tailscale up"), "{message}");
    assert!(entries(home.path()).is_empty());
}

#[test]
fn init_unreachable_daemon_writes_nothing() {
    let fakes = Fakes::healthy();
    fakes.output("tailscale", "");
    fs::write(fakes.dir.path().join("tailscale.code"), "1").unwrap();
    let home = tempfile::tempdir().unwrap();
    let prefix = home.path().join("styx");

    let output = init(&fakes, &prefix, &[]);

    assert_eq!(output.status.code(), Some(3));
    assert!(
        stderr(&output).contains("tailscale status --json` failed"),
        "{}",
        stderr(&output)
    );
    assert!(entries(home.path()).is_empty());
}

#[test]
fn init_bad_flags_write_nothing() {
    let fakes = Fakes::healthy();
    let home = tempfile::tempdir().unwrap();
    let prefix = home.path().join("styx");

    let bad_region = init(&fakes, &prefix, &["--region", "my region"]);
    let bad_node = init(&fakes, &prefix, &["--node-name=bad_name"]);
    let unknown = init(&fakes, &prefix, &["--regoin", "eu"]);

    assert_eq!(bad_region.status.code(), Some(3));
    assert!(
        stderr(&bad_region).contains("invalid region \"my region\""),
        "{}",
        stderr(&bad_region)
    );
    assert_eq!(bad_node.status.code(), Some(3));
    assert!(
        stderr(&bad_node).contains("invalid node name"),
        "{}",
        stderr(&bad_node)
    );
    assert_eq!(unknown.status.code(), Some(2), "clap rejects unknown flags");
    assert!(entries(home.path()).is_empty());
    assert!(
        fakes.calls().is_empty(),
        "no program may run before the flags are valid"
    );
}

#[test]
fn init_without_nomad_names_the_fix() {
    let fakes = Fakes::healthy();
    fakes.remove("nomad");
    let home = tempfile::tempdir().unwrap();
    let prefix = home.path().join("styx");

    let output = init(&fakes, &prefix, &[]);

    assert_eq!(output.status.code(), Some(3));
    assert!(
        stderr(&output).contains("brew install hashicorp/tap/nomad"),
        "{}",
        stderr(&output)
    );
    assert!(entries(home.path()).is_empty());
}

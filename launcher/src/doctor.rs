//! `styx doctor`: every prerequisite and known macOS hazard, each reported as OK, WARN
//! or FAIL with the command that fixes it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;

use serde::Serialize;

use crate::driver_options::DEFAULT_METRICS_PORT;
use crate::launchd;
use crate::layout::Layout;
use crate::process::{Invocation, ProcessError, find_program};
use crate::state::{NodeState, Role, ports};
use crate::tailscale::{self, TailscaleError, TailscaleNode};

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub level: Level,
    pub detail: String,
    /// Command or action that fixes a WARN or FAIL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            level: Level::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name,
            level: Level::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name,
            level: Level::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Minimum versions the generated configs need.
// NOTE: chosen from the config syntax used (Consul's `tls { defaults {} }` block, Nomad's
// `vault` block without a token), not tested against each release.
const MINIMUM_VERSIONS: [(&str, &str, [u32; 3]); 3] = [
    ("nomad", "hashicorp/tap/nomad", [1, 7, 0]),
    ("consul", "hashicorp/tap/consul", [1, 12, 0]),
    ("vault", "hashicorp/tap/vault", [1, 12, 0]),
];

/// Runs `styx doctor`; returns whether no check failed.
pub async fn run(json: bool, layout: &Layout, system_root: &Path) -> anyhow::Result<bool> {
    let checks = collect(layout, system_root).await;

    if json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        for check in &checks {
            let level = match check.level {
                Level::Ok => "OK  ",
                Level::Warn => "WARN",
                Level::Fail => "FAIL",
            };
            println!("{level} {:<22} {}", check.name, check.detail);
            if let Some(fix) = &check.fix {
                println!("     {:<22} fix: {fix}", "");
            }
        }
    }
    Ok(checks.iter().all(|check| check.level != Level::Fail))
}

/// Runs every check in order.
pub async fn collect(layout: &Layout, system_root: &Path) -> Vec<Check> {
    let mut checks = vec![macos_version().await, apple_silicon().await];
    checks.extend(container_checks().await);
    let tailscale = tailscale::detect().await;
    checks.extend(tailscale_checks(&tailscale));
    // Client nodes run no Vault, so a missing Vault there is no failure.
    let client_node = NodeState::load(layout).is_ok_and(|state| state.role == Role::Client);
    for (program, formula, minimum) in MINIMUM_VERSIONS {
        if program == "vault" && client_node && find_program("vault").is_none() {
            checks.push(Check::ok("vault installed", "not needed on a client node"));
            continue;
        }
        checks.push(hashicorp_version(program, formula, minimum).await);
    }
    checks.push(file_limit(layout).await);
    checks.push(local_network());
    checks.push(consul_resolver(system_root));
    let tailscale_ip = tailscale.as_ref().ok().map(|node| node.ipv4);
    checks.push(ports_in_use(tailscale_ip).await);
    checks
}

async fn macos_version() -> Check {
    const NAME: &str = "macOS version";
    let output = match Invocation::new("sw_vers")
        .arg("-productVersion")
        .run()
        .await
    {
        Ok(output) if output.success() => output,
        Ok(output) => {
            return Check::fail(
                NAME,
                format!("sw_vers failed: {}", output.first_message_line()),
                "run styx on macOS 15 or newer",
            );
        }
        Err(error) => {
            return Check::fail(
                NAME,
                format!("not macOS ({error})"),
                "run styx on macOS 15 or newer",
            );
        }
    };
    let version = output.stdout.trim().to_owned();
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|major| major.parse().ok())
        .unwrap_or(0);
    match major {
        26.. => Check::ok(NAME, version),
        15 => Check::warn(
            NAME,
            format!("{version}: containers cannot reach each other over vmnet before macOS 26"),
            "upgrade to macOS 26 for container-to-container networking",
        ),
        _ => Check::fail(
            NAME,
            format!("{version}: Apple's container needs macOS 15 or newer"),
            "upgrade macOS",
        ),
    }
}

async fn apple_silicon() -> Check {
    const NAME: &str = "Apple silicon";
    match Invocation::new("uname").arg("-m").run().await {
        Ok(output) if output.stdout.trim() == "arm64" => Check::ok(NAME, "arm64"),
        Ok(output) => Check::fail(
            NAME,
            format!(
                "machine is {}: Apple's container runs only on Apple silicon",
                output.stdout.trim()
            ),
            "use a Mac with Apple silicon",
        ),
        Err(error) => Check::fail(NAME, error.to_string(), "use a Mac with Apple silicon"),
    }
}

async fn container_checks() -> Vec<Check> {
    const INSTALLED: &str = "container installed";
    const SERVICE: &str = "container service";
    let install_fix = "install the signed package from https://github.com/apple/container/releases";

    let version = match Invocation::new("container").arg("--version").run().await {
        Ok(output) if output.success() => output.stdout.trim().to_owned(),
        Ok(output) => {
            return vec![Check::fail(
                INSTALLED,
                format!(
                    "`container --version` failed: {}",
                    output.first_message_line()
                ),
                install_fix,
            )];
        }
        Err(ProcessError::NotFound { .. }) => {
            return vec![Check::fail(
                INSTALLED,
                "container not found on PATH",
                install_fix,
            )];
        }
        Err(error) => return vec![Check::fail(INSTALLED, error.to_string(), install_fix)],
    };

    let service = match Invocation::new("container")
        .args(["system", "status"])
        .run()
        .await
    {
        Ok(output) if output.success() => Check::ok(SERVICE, "running"),
        Ok(output) => Check::fail(
            SERVICE,
            format!("not running: {}", output.first_message_line()),
            "container system start",
        ),
        Err(error) => Check::fail(SERVICE, error.to_string(), "container system start"),
    };
    vec![Check::ok(INSTALLED, version), service]
}

fn tailscale_checks(detected: &Result<TailscaleNode, TailscaleError>) -> Vec<Check> {
    const UP: &str = "Tailscale up";
    const EXIT: &str = "Tailscale exit node";
    let node = match detected {
        Ok(node) => node,
        Err(TailscaleError::NotInstalled) => {
            return vec![Check::fail(
                UP,
                "tailscale not found on PATH",
                "install Tailscale from https://tailscale.com/download/mac",
            )];
        }
        Err(TailscaleError::NotRunning { state }) => {
            return vec![Check::fail(UP, format!("state {state}"), "tailscale up")];
        }
        Err(error) => return vec![Check::fail(UP, error.to_string(), "tailscale up")],
    };

    let name = if node.dns_name.is_empty() {
        node.host_name.clone()
    } else {
        node.dns_name.clone()
    };
    let mut checks = vec![match node.health.first() {
        None => Check::ok(UP, format!("{} ({name})", node.ipv4)),
        Some(warning) => Check::warn(
            UP,
            format!("{} ({name}), but Tailscale reports: {warning}", node.ipv4),
            "tailscale status",
        ),
    }];
    checks.push(match &node.exit_node {
        None => Check::ok(EXIT, "none in use"),
        Some((id, _)) => Check::warn(
            EXIT,
            format!("exit node {id} is in use: it can take the route to the container subnet"),
            "tailscale set --exit-node=",
        ),
    });
    checks
}

async fn hashicorp_version(program: &'static str, formula: &str, minimum: [u32; 3]) -> Check {
    let name = match program {
        "nomad" => "nomad installed",
        "consul" => "consul installed",
        _ => "vault installed",
    };
    let install = format!("brew install {formula}");
    let output = match Invocation::new(program).arg("version").run().await {
        Ok(output) if output.success() => output,
        Ok(output) => {
            return Check::fail(
                name,
                format!(
                    "`{program} version` failed: {}",
                    output.first_message_line()
                ),
                install,
            );
        }
        Err(ProcessError::NotFound { .. }) => {
            return Check::fail(name, format!("{program} not found on PATH"), install);
        }
        Err(error) => return Check::fail(name, error.to_string(), install),
    };

    let first_line = output
        .stdout
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    let Some(version) = parse_version(&first_line) else {
        return Check::warn(
            name,
            format!("unrecognised version output {first_line:?}"),
            format!("brew upgrade {formula}"),
        );
    };
    let minimum_text = format!("{}.{}.{}", minimum[0], minimum[1], minimum[2]);
    if version < minimum {
        return Check::fail(
            name,
            format!("{first_line}: {minimum_text} or newer is needed"),
            format!("brew upgrade {formula}"),
        );
    }
    Check::ok(name, first_line)
}

/// Extracts `[major, minor, patch]` from output such as `Nomad v1.9.3` or
/// `Vault v1.18.2 (abc), built ...`.
pub fn parse_version(line: &str) -> Option<[u32; 3]> {
    let word = line.split_whitespace().find(|word| word.starts_with('v'))?;
    let mut parts = word[1..]
        .split(|c: char| !c.is_ascii_digit())
        .take(3)
        .map(|part| part.parse::<u32>().ok());
    Some([
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ])
}

async fn file_limit(layout: &Layout) -> Check {
    const NAME: &str = "launchd file limit";
    let soft = match Invocation::new("launchctl")
        .args(["limit", "maxfiles"])
        .run()
        .await
    {
        Ok(output) => output
            .stdout
            .split_whitespace()
            .nth(1)
            .map(str::to_owned)
            .unwrap_or_else(|| "unknown".to_owned()),
        Err(error) => return Check::fail(NAME, error.to_string(), "run styx on macOS"),
    };

    let plist = layout.plist(&launchd::label("nomad"));
    let raised = plist::Value::from_file(&plist).ok().and_then(|value| {
        value
            .as_dictionary()?
            .get("SoftResourceLimits")?
            .as_dictionary()?
            .get("NumberOfFiles")?
            .as_signed_integer()
    });
    match raised {
        Some(limit) if limit >= launchd::NUMBER_OF_FILES => Check::ok(
            NAME,
            format!(
                "Styx agents raise NumberOfFiles to {limit} (launchd default soft limit: {soft})"
            ),
        ),
        Some(limit) => Check::warn(
            NAME,
            format!("the Nomad agent's NumberOfFiles is only {limit}"),
            "styx init --force (or styx join --force) rewrites the agents",
        ),
        None => Check::warn(
            NAME,
            format!("no Styx agents yet; launchd's default soft limit is {soft}"),
            "styx init or styx join writes agents that raise it",
        ),
    }
}

fn local_network() -> Check {
    // macOS offers no command that reads the Local Network privacy decision, and the
    // permission belongs to each binary (styx-driver, container-runtime-linux), not to
    // this process, so a probe from here would prove nothing.
    Check::warn(
        "Local Network access",
        "cannot be checked from the command line; without it published ports reset connections",
        "System Settings > Privacy & Security > Local Network: allow styx-driver and container-runtime-linux",
    )
}

fn consul_resolver(system_root: &Path) -> Check {
    const NAME: &str = "/etc/resolver/consul";
    let fix = "sudo mkdir -p /etc/resolver && printf 'nameserver 127.0.0.1\\nport 8600\\n' | sudo tee /etc/resolver/consul";
    let path = system_root.join("etc/resolver/consul");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(_) => {
            return Check::warn(
                NAME,
                "missing: *.consul names do not resolve on this Mac",
                fix,
            );
        }
    };

    let lines: Vec<Vec<&str>> = text
        .lines()
        .map(|line| {
            line.split('#')
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .collect()
        })
        .filter(|words: &Vec<&str>| !words.is_empty())
        .collect();
    if lines.iter().any(|words| words[0] == "search") {
        return Check::fail(
            NAME,
            "contains a `search` line, which breaks short names for every lookup",
            fix,
        );
    }
    let has = |key: &str, value: &str| {
        lines
            .iter()
            .any(|words| words.len() >= 2 && words[0] == key && words[1] == value)
    };
    if !has("nameserver", "127.0.0.1") || !has("port", &ports::CONSUL_DNS.to_string()) {
        return Check::warn(NAME, "does not point at 127.0.0.1 port 8600", fix);
    }
    Check::ok(NAME, "nameserver 127.0.0.1 port 8600, no search line")
}

/// Ports of the services Styx runs, each with the service whose agent owns the listener.
/// The driver's metrics port belongs to Nomad, which runs the driver as a plugin.
const SERVICE_PORTS: [(u16, &str); 11] = [
    (ports::NOMAD_HTTP, "nomad"),
    (ports::NOMAD_RPC, "nomad"),
    (ports::NOMAD_SERF, "nomad"),
    (DEFAULT_METRICS_PORT, "nomad"),
    (ports::CONSUL_SERVER, "consul"),
    (ports::CONSUL_SERF_LAN, "consul"),
    (ports::CONSUL_HTTPS, "consul"),
    (ports::CONSUL_GRPC_TLS, "consul"),
    (ports::CONSUL_DNS, "consul"),
    (ports::VAULT_API, "vault"),
    (ports::VAULT_CLUSTER, "vault"),
];

async fn ports_in_use(tailscale_ip: Option<IpAddr>) -> Check {
    const NAME: &str = "ports";
    let mut addresses = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
    addresses.extend(tailscale_ip);

    let scan = scan_ports(&SERVICE_PORTS, &addresses).await;

    if let Some(first) = scan.conflicts.first() {
        let list: Vec<String> = scan.conflicts.iter().map(SocketAddr::to_string).collect();
        return Check::fail(
            NAME,
            format!("in use by another program: {}", list.join(", ")),
            format!(
                "find the owner with `lsof -nP -iTCP:{} -sTCP:LISTEN` and stop it",
                first.port()
            ),
        );
    }
    if let Some((address, error)) = scan.unprobed.first() {
        return Check::warn(
            NAME,
            format!(
                "failed to probe {address} ({error}); the ports on the other addresses are \
                 free or used by Styx agents"
            ),
            "check that Tailscale is up with `tailscale status`, then run `styx doctor` again",
        );
    }
    let probed: Vec<String> = addresses.iter().map(IpAddr::to_string).collect();
    Check::ok(
        NAME,
        format!(
            "Nomad, Consul, Vault and driver metrics ports are free or used by Styx agents on {}",
            probed.join(" and ")
        ),
    )
}

/// Result of probing each port on each address.
#[derive(Debug, Default)]
struct PortScan {
    /// Addresses whose port another program listens on.
    conflicts: Vec<SocketAddr>,
    /// Addresses that could not be probed, such as a Tailscale address that is not
    /// assigned to this Mac, with the bind error.
    unprobed: Vec<(SocketAddr, std::io::Error)>,
}

/// Binds each of `service_ports` on each of `addresses` to find listeners that are not
/// Styx's. A port in use while the agent of its service is loaded counts as Styx's.
async fn scan_ports(service_ports: &[(u16, &str)], addresses: &[IpAddr]) -> PortScan {
    let mut scan = PortScan::default();
    for &(port, service) in service_ports {
        for &ip in addresses {
            let address = SocketAddr::new(ip, port);

            // Binding a loopback address also detects a listener on the wildcard address
            // on Linux.
            // NOTE: std sets SO_REUSEADDR before binding, and on macOS that lets a bind to
            // a specific address succeed next to a wildcard listener, so a wildcard
            // listener may go unreported there. Not yet checked on a Mac.
            let error = match TcpListener::bind(address) {
                Ok(_) => continue,
                Err(error) => error,
            };
            if error.kind() != std::io::ErrorKind::AddrInUse {
                // One error per address is enough, since the others fail the same way.
                if !scan.unprobed.iter().any(|(other, _)| other.ip() == ip) {
                    scan.unprobed.push((address, error));
                }
                continue;
            }

            let ours = launchd::print(&launchd::label(service))
                .await
                .is_ok_and(|agent| agent.loaded);
            if !ours {
                scan.conflicts.push(address);
            }
        }
    }
    scan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_port_is_checked() {
        assert!(SERVICE_PORTS.contains(&(DEFAULT_METRICS_PORT, "nomad")));
    }

    #[tokio::test]
    async fn scan_reports_address_and_port() {
        // A second loopback address plays the Tailscale address, so a port bound only there
        // is free on 127.0.0.1.
        let tailscale_ip: IpAddr = "127.0.0.2".parse().unwrap();
        let listener = TcpListener::bind((tailscale_ip, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);

        let loopback_only = scan_ports(&[(port, "nomad")], &[loopback]).await;
        let both = scan_ports(&[(port, "nomad")], &[loopback, tailscale_ip]).await;

        assert!(loopback_only.conflicts.is_empty(), "{loopback_only:?}");
        assert_eq!(both.conflicts, [SocketAddr::new(tailscale_ip, port)]);
        assert!(both.unprobed.is_empty(), "{both:?}");
    }

    #[tokio::test]
    async fn scan_reports_unassigned_address_once() {
        // 192.0.2.0/24 is reserved for documentation, so no host has this address, and
        // binding it fails locally without sending anything.
        let unassigned: IpAddr = "192.0.2.1".parse().unwrap();

        let scan = scan_ports(&[(4646, "nomad"), (4647, "nomad")], &[unassigned]).await;

        assert!(scan.conflicts.is_empty(), "{scan:?}");
        assert_eq!(scan.unprobed.len(), 1, "{scan:?}");
        assert_eq!(
            scan.unprobed[0].1.kind(),
            std::io::ErrorKind::AddrNotAvailable
        );
    }

    #[test]
    fn parse_version_reads_hashicorp_output() {
        assert_eq!(parse_version("Nomad v1.9.3"), Some([1, 9, 3]));
        assert_eq!(
            parse_version("Vault v1.18.2 (abc), built 2024-11-20"),
            Some([1, 18, 2])
        );
        assert_eq!(parse_version("Consul v1.20.1"), Some([1, 20, 1]));
        assert_eq!(parse_version("something else"), None);
    }

    #[test]
    fn resolver_with_search_line_fails() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("etc/resolver");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("consul"),
            "nameserver 127.0.0.1\nport 8600\nsearch consul\n",
        )
        .unwrap();

        let check = consul_resolver(root.path());

        assert_eq!(check.level, Level::Fail);
    }

    #[test]
    fn resolver_without_search_line_passes() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("etc/resolver");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("consul"), "nameserver 127.0.0.1\nport 8600\n").unwrap();

        let check = consul_resolver(root.path());

        assert_eq!(check.level, Level::Ok, "{}", check.detail);
    }
}

//! Nomad, Consul and Vault agent configs, built as HCL bodies with `hcl-rs` so that every
//! string is quoted and escaped by the HCL serializer.
//!
//! What every config enforces: TLS with mutual verification on every API and RPC
//! listener, encrypted gossip, listeners on the Tailscale address or loopback only (never
//! 0.0.0.0), and Prometheus telemetry. What they do not set up yet: Nomad and Consul ACLs,
//! and Vault's JWT auth method for Nomad workload identities.

use hcl::{Block, Body};

use crate::driver_options as driver;
use crate::layout::Layout;
use crate::state::{NodeState, Role, ports};

/// Gossip keys the configs embed.
#[derive(Debug, Clone)]
pub struct GossipKeys {
    pub consul: String,
    /// Nomad server gossip key; `None` on client nodes, which do not gossip.
    pub nomad: Option<String>,
}

fn path_string(path: &std::path::Path) -> String {
    path.to_string_lossy().into_owned()
}

fn render(body: &Body) -> String {
    let text = hcl::to_string(body).expect("generated HCL always serializes");
    format!("# Written by styx; `styx init --force` or `styx join --force` rewrites it.\n{text}")
}

/// Renders the Nomad agent config: server and client on the server node, client
/// elsewhere.
pub fn nomad(state: &NodeState, layout: &Layout, keys: &GossipKeys) -> String {
    let ip = state.tailscale_ip.to_string();
    let cert = state.cert_name("nomad");

    let mut body = Body::builder()
        .add_attribute(("name", state.node_name.as_str()))
        .add_attribute(("region", state.region.as_str()))
        .add_attribute(("datacenter", state.datacenter.as_str()))
        .add_attribute(("data_dir", path_string(&layout.service_data("nomad"))))
        .add_attribute(("plugin_dir", path_string(&layout.plugins_dir())))
        .add_attribute(("bind_addr", ip.as_str()))
        .add_block(
            Block::builder("advertise")
                .add_attribute(("http", ip.as_str()))
                .add_attribute(("rpc", ip.as_str()))
                .add_attribute(("serf", ip.as_str()))
                .build(),
        )
        .add_block(
            Block::builder("ports")
                .add_attribute(("http", i64::from(ports::NOMAD_HTTP)))
                .add_attribute(("rpc", i64::from(ports::NOMAD_RPC)))
                .add_attribute(("serf", i64::from(ports::NOMAD_SERF)))
                .build(),
        );

    if state.role == Role::Server {
        let mut server = Block::builder("server")
            .add_attribute(("enabled", true))
            .add_attribute(("bootstrap_expect", 1i64));
        if let Some(key) = &keys.nomad {
            server = server.add_attribute(("encrypt", key.as_str()));
        }
        body = body.add_block(server.build());
    }

    let servers: Vec<String> = vec![format!("{}:{}", state.server_ip, ports::NOMAD_RPC)];
    // Nomad fingerprints the interface named here for port allocation. The interface is
    // chosen by address, because the utun number of Tailscale's interface changes
    // between Macs: go-sockaddr's `include "network"` keeps the interfaces whose address
    // lies in the given CIDR block.
    // NOTE: this template has not been run against a real Nomad agent.
    let interface =
        format!("{{{{ GetAllInterfaces | include \"network\" \"{ip}/32\" | attr \"name\" }}}}");
    body = body.add_block(
        Block::builder("client")
            .add_attribute(("enabled", true))
            .add_attribute(("servers", servers))
            .add_attribute(("network_interface", interface))
            .build(),
    );

    let body = body
        .add_block(
            Block::builder("tls")
                .add_attribute(("http", true))
                .add_attribute(("rpc", true))
                .add_attribute(("ca_file", path_string(&layout.cert("ca"))))
                .add_attribute(("cert_file", path_string(&layout.cert(cert))))
                .add_attribute(("key_file", path_string(&layout.key(cert))))
                .add_attribute(("verify_server_hostname", true))
                .add_attribute(("verify_https_client", true))
                .build(),
        )
        .add_block(nomad_consul_block(state, layout))
        .add_block(
            Block::builder("vault")
                .add_attribute(("enabled", true))
                .add_attribute(("address", state.vault_url()))
                .add_attribute(("ca_file", path_string(&layout.cert("ca"))))
                .build(),
        )
        .add_block(driver_plugin_block(state))
        .add_block(
            Block::builder("telemetry")
                .add_attribute(("collection_interval", "10s"))
                .add_attribute(("disable_hostname", true))
                .add_attribute(("prometheus_metrics", true))
                .add_attribute(("publish_allocation_metrics", true))
                .add_attribute(("publish_node_metrics", true))
                .build(),
        )
        .build();
    render(&body)
}

fn nomad_consul_block(state: &NodeState, layout: &Layout) -> Block {
    let cert = state.cert_name("consul");
    Block::builder("consul")
        .add_attribute(("address", format!("127.0.0.1:{}", ports::CONSUL_HTTPS)))
        .add_attribute((
            "grpc_address",
            format!("127.0.0.1:{}", ports::CONSUL_GRPC_TLS),
        ))
        .add_attribute(("ssl", true))
        .add_attribute(("ca_file", path_string(&layout.cert("ca"))))
        .add_attribute(("grpc_ca_file", path_string(&layout.cert("ca"))))
        .add_attribute(("cert_file", path_string(&layout.cert(cert))))
        .add_attribute(("key_file", path_string(&layout.key(cert))))
        .build()
}

fn driver_plugin_block(state: &NodeState) -> Block {
    let metrics_address = format!("{}:{}", state.tailscale_ip, driver::DEFAULT_METRICS_PORT);
    Block::builder("plugin")
        .add_label(driver::DRIVER_NAME)
        .add_block(
            Block::builder("config")
                .add_attribute((driver::CONTAINER_PATH, path_string(&state.container_path)))
                .add_attribute((driver::PORT_OFFSET, driver::DEFAULT_PORT_OFFSET))
                .add_attribute((driver::BIND_ADDRESS, driver::DEFAULT_BIND_ADDRESS))
                .add_attribute((
                    driver::PRECONNECT_POOL_SIZE,
                    driver::DEFAULT_PRECONNECT_POOL_SIZE,
                ))
                .add_attribute((driver::METRICS_ADDRESS, metrics_address))
                .add_attribute((driver::STATS_INTERVAL, driver::DEFAULT_STATS_INTERVAL))
                .build(),
        )
        .build()
}

/// Renders the Consul agent config: a single-server cluster on the server node, a
/// client that joins the server over Tailscale elsewhere.
pub fn consul(state: &NodeState, layout: &Layout, keys: &GossipKeys) -> String {
    let ip = state.tailscale_ip.to_string();
    let cert = state.cert_name("consul");

    let mut body = Body::builder()
        .add_attribute(("node_name", state.node_name.as_str()))
        .add_attribute(("datacenter", state.datacenter.as_str()))
        .add_attribute(("data_dir", path_string(&layout.service_data("consul"))))
        .add_attribute(("bind_addr", ip.as_str()))
        .add_attribute(("advertise_addr", ip.as_str()))
        .add_attribute(("client_addr", "127.0.0.1"))
        .add_attribute(("encrypt", keys.consul.as_str()))
        .add_attribute(("encrypt_verify_incoming", true))
        .add_attribute(("encrypt_verify_outgoing", true));

    if state.role == Role::Server {
        body = body
            .add_attribute(("server", true))
            .add_attribute(("bootstrap_expect", 1i64))
            .add_block(
                Block::builder("ui_config")
                    .add_attribute(("enabled", true))
                    .build(),
            );
    } else {
        let join: Vec<String> = vec![state.server_ip.to_string()];
        body = body
            .add_attribute(("server", false))
            .add_attribute(("retry_join", join));
    }

    let body = body
        .add_block(
            Block::builder("ports")
                // The plain HTTP and gRPC listeners are off: only their TLS variants run.
                .add_attribute(("http", -1i64))
                .add_attribute(("https", i64::from(ports::CONSUL_HTTPS)))
                .add_attribute(("grpc", -1i64))
                .add_attribute(("grpc_tls", i64::from(ports::CONSUL_GRPC_TLS)))
                .add_attribute(("dns", i64::from(ports::CONSUL_DNS)))
                .build(),
        )
        .add_block(
            Block::builder("tls")
                .add_block(
                    Block::builder("defaults")
                        .add_attribute(("ca_file", path_string(&layout.cert("ca"))))
                        .add_attribute(("cert_file", path_string(&layout.cert(cert))))
                        .add_attribute(("key_file", path_string(&layout.key(cert))))
                        .add_attribute(("verify_incoming", true))
                        .add_attribute(("verify_outgoing", true))
                        .build(),
                )
                .add_block(
                    Block::builder("internal_rpc")
                        .add_attribute(("verify_server_hostname", true))
                        .build(),
                )
                .build(),
        )
        .add_block(
            Block::builder("dns_config")
                // Consul trims long UDP responses without the TC bit unless this is set, so
                // clients would silently get only some instances.
                .add_attribute(("enable_truncate", true))
                .add_attribute(("only_passing", true))
                .build(),
        )
        .add_block(
            Block::builder("telemetry")
                .add_attribute(("prometheus_retention_time", "60s"))
                .add_attribute(("disable_hostname", true))
                .build(),
        )
        .build();
    render(&body)
}

/// Renders the Vault server config (server node only): integrated raft storage, a TLS
/// listener on loopback and one on the Tailscale address.
pub fn vault(state: &NodeState, layout: &Layout) -> String {
    let ip = state.tailscale_ip;
    let cert = state.cert_name("vault");
    let listener = |address: String, cluster_address: Option<String>| {
        let mut block = Block::builder("listener")
            .add_label("tcp")
            .add_attribute(("address", address));
        if let Some(cluster_address) = cluster_address {
            block = block.add_attribute(("cluster_address", cluster_address));
        }
        block
            .add_attribute(("tls_cert_file", path_string(&layout.cert(cert))))
            .add_attribute(("tls_key_file", path_string(&layout.key(cert))))
            .add_attribute(("tls_min_version", "tls12"))
            .build()
    };

    let body = Body::builder()
        .add_attribute(("ui", true))
        // macOS has no mlock support for Vault, and raft storage needs it off.
        .add_attribute(("disable_mlock", true))
        .add_attribute(("api_addr", format!("https://{ip}:{}", ports::VAULT_API)))
        .add_attribute((
            "cluster_addr",
            format!("https://{ip}:{}", ports::VAULT_CLUSTER),
        ))
        .add_block(
            Block::builder("storage")
                .add_label("raft")
                .add_attribute(("path", path_string(&layout.service_data("vault"))))
                .add_attribute(("node_id", state.node_name.as_str()))
                .build(),
        )
        .add_block(listener(format!("127.0.0.1:{}", ports::VAULT_API), None))
        .add_block(listener(
            format!("{ip}:{}", ports::VAULT_API),
            Some(format!("{ip}:{}", ports::VAULT_CLUSTER)),
        ))
        .add_block(
            Block::builder("telemetry")
                .add_attribute(("prometheus_retention_time", "30s"))
                .add_attribute(("disable_hostname", true))
                .build(),
        )
        .build();
    render(&body)
}

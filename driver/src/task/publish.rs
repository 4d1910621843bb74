//! Proxy listeners that publish a task's container ports on the node's bind address.
//!
//! Each published port gets its own `styx_proxy` server, and a task's servers share
//! one stop token, so closing one task's listeners leaves the others serving. Apple's own `--publish`
//! forwarder is not used: it binds 0.0.0.0 by default and has no metrics. Each listener
//! is named by [`crate::metrics::listener_name`], the `listener` label of its metrics.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use styx_proxy::{ListenerConfig, ProxyConfig, Server};
use tokio_util::sync::CancellationToken;

use super::TaskError;
use super::spec::PortBinding;
use crate::config::BindAddress;
use crate::metrics;
use crate::proto::drivers::TaskConfig;

/// How long closing a task's listeners waits for open connections to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// The running listeners of one task.
#[derive(Debug)]
pub struct Publication {
    stop: CancellationToken,
}

impl Publication {
    /// Stops accepting at once and lets open connections drain in the background.
    pub fn close(self) {
        self.stop.cancel();
    }
}

/// Binds one listener per binding of the task `config`, forwarding to `container_ip`,
/// and starts serving. Each listener is its own server, so a bind error names its port.
/// Nothing keeps listening when one of them fails.
pub fn publish(
    config: &TaskConfig,
    bind_ip: IpAddr,
    container_ip: Ipv4Addr,
    bindings: &[PortBinding],
    preconnect: usize,
) -> Result<Option<Publication>, TaskError> {
    if bindings.is_empty() {
        return Ok(None);
    }

    let mut servers = Vec::with_capacity(bindings.len());
    for binding in bindings {
        let addr = SocketAddr::new(bind_ip, binding.host_port);
        let mut listener = ListenerConfig::new(
            metrics::listener_name(config, &binding.label),
            addr,
            vec![SocketAddr::new(container_ip.into(), binding.container_port)],
        );
        listener.preconnect = preconnect;
        let config = ProxyConfig {
            listeners: vec![listener],
            metrics_listen: None,
            drain_timeout: DRAIN_TIMEOUT,
        };
        // On error the servers bound so far are dropped, which closes their sockets.
        let server = Server::bind(&config).map_err(|source| TaskError::Publish {
            label: binding.label.clone(),
            addr,
            source,
        })?;
        servers.push(server);
    }

    let stop = CancellationToken::new();
    for server in servers {
        tokio::spawn(server.run(stop.clone()));
    }
    Ok(Some(Publication { stop }))
}

/// Returns the IP that published ports listen on. For `tailscale` that is the node's
/// address in Tailscale's 100.64.0.0/10 range, looked up on each call because
/// Tailscale may come up after the plugin.
pub fn resolve_bind_ip(bind: BindAddress) -> Result<IpAddr, TaskError> {
    match bind {
        BindAddress::Ip(ip) => Ok(ip),
        BindAddress::Tailscale => tailscale_ipv4().map(IpAddr::V4).ok_or_else(|| {
            TaskError::BindAddress(
                "no interface has a Tailscale address (100.64.0.0/10); start Tailscale or set bind_address in the plugin config".into(),
            )
        }),
    }
}

fn tailscale_ipv4() -> Option<Ipv4Addr> {
    let addresses = nix::ifaddrs::getifaddrs().ok()?;
    addresses
        .filter_map(|interface| interface.address)
        .filter_map(|address| address.as_sockaddr_in().map(|socket| socket.ip()))
        .find(|ip| {
            let [first, second, ..] = ip.octets();
            first == 100 && (64..128).contains(&second)
        })
}

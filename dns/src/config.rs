//! Resolver settings: the routes (suffix to upstream servers), timeouts, demotion and cache
//! TTL policy, and the parser for `--dns SUFFIX=IP[:PORT][,IP[:PORT]...]` route overrides.
//!
//! This module only describes a resolver; [`crate::SplitResolver::new`] builds one from it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use crate::name::{NameError, Suffix, parse_ip_literal};

/// Port of a `--dns` server given without one: the standard DNS port.
pub const DNS_PORT: u16 = 53;

/// MagicDNS, Tailscale's resolver for `<machine>.<tailnet>.ts.net` names.
pub const MAGICDNS_SERVER: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(100, 100, 100, 100)), 53);

/// The local Consul agent's DNS interface (Consul's default `ports.dns`).
pub const CONSUL_DNS_SERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8600);

/// Upstream servers of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Servers {
    /// These servers, tried in this order while they are healthy.
    Static(Vec<SocketAddr>),
    /// The name servers of the operating system's configuration (`/etc/resolv.conf` on Linux,
    /// the System Configuration framework on macOS), read once when the resolver is built.
    System,
}

/// One route: names under `suffix` go to `servers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// Domain suffix this route serves. The longest matching suffix wins.
    pub suffix: Suffix,
    /// Upstream servers of this route.
    pub servers: Servers,
    /// Send SRV queries over TCP. Consul trims long UDP answers without setting the TC bit
    /// unless its `dns_config.enable_truncate` is on, so a UDP client silently sees only
    /// some instances. Default: true for `consul` and names under it, false elsewhere.
    pub srv_over_tcp: bool,
    /// Upper bound on how long a negative answer (NXDOMAIN or no records) is cached, whatever
    /// the SOA says. Default: 5 s for `consul` (a service that comes up must be seen soon),
    /// 300 s elsewhere.
    pub max_negative_ttl: Duration,
}

impl RouteConfig {
    /// Builds a route with the defaults that suit its suffix (see the field docs).
    pub fn new(suffix: Suffix, servers: Servers) -> Self {
        let consul: Suffix = "consul".parse().expect("\"consul\" is a valid suffix");
        let is_consul = suffix.label_count() > 0 && consul.contains(suffix.name());

        Self {
            suffix,
            servers,
            srv_over_tcp: is_consul,
            max_negative_ttl: if is_consul {
                Duration::from_secs(5)
            } else {
                Duration::from_secs(300)
            },
        }
    }
}

/// Settings of a [`crate::SplitResolver`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverConfig {
    /// Routes by suffix. Default: `ts.net` to MagicDNS (100.100.100.100:53), `consul` to the
    /// local Consul agent (127.0.0.1:8600), `.` (everything else) to the system servers.
    pub routes: Vec<RouteConfig>,
    /// How long one server gets to answer one query. Default: 300 ms, which is far above a
    /// loopback or tailnet round trip and far below the seconds a client waits.
    pub server_timeout: Duration,
    /// How long to wait for a server before also asking the next one of the route, while the
    /// first query stays open. Default: 100 ms.
    pub hedge_delay: Duration,
    /// How long a server that timed out or failed is tried last after its first failure in a
    /// row. Each further failure doubles the period, up to `max_demotion`. Default: 5 s.
    pub demotion: Duration,
    /// Upper bound of the demotion period. Default: 60 s.
    pub max_demotion: Duration,
    /// Shortest time any answer is cached, so that a TTL-0 answer (Consul's default) is reused
    /// for this long instead of being asked for on every connection. Default: 1 s, which
    /// bounds upstream load to one query per name and type per second and lets a changed
    /// address set show within about a second.
    pub ttl_floor: Duration,
    /// Upper bound on how long a positive answer is cached. Default: 1 hour.
    pub max_ttl: Duration,
    /// Maximum number of cached answers. Default: 4096.
    pub cache_capacity: usize,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        Self {
            routes: default_routes(),
            server_timeout: Duration::from_millis(300),
            hedge_delay: Duration::from_millis(100),
            demotion: Duration::from_secs(5),
            max_demotion: Duration::from_secs(60),
            ttl_floor: Duration::from_secs(1),
            max_ttl: Duration::from_secs(3600),
            cache_capacity: 4096,
        }
    }
}

impl ResolverConfig {
    /// Replaces the route with the override's suffix, or adds it if no route has that suffix.
    /// A replaced route keeps its other settings.
    pub fn apply_override(&mut self, route: RouteOverride) {
        let servers = Servers::Static(route.servers);
        match self.routes.iter_mut().find(|r| r.suffix == route.suffix) {
            Some(existing) => existing.servers = servers,
            None => self.routes.push(RouteConfig::new(route.suffix, servers)),
        }
    }
}

fn default_routes() -> Vec<RouteConfig> {
    let suffix = |text: &str| text.parse::<Suffix>().expect("built-in suffixes are valid");
    vec![
        RouteConfig::new(suffix("ts.net"), Servers::Static(vec![MAGICDNS_SERVER])),
        RouteConfig::new(suffix("consul"), Servers::Static(vec![CONSUL_DNS_SERVER])),
        RouteConfig::new(Suffix::root(), Servers::System),
    ]
}

/// A `--dns SUFFIX=IP[:PORT][,IP[:PORT]...]` value: the servers that replace a route's.
///
/// A server without a port gets port 53, the DNS default: `127.0.0.1` is `127.0.0.1:53`. An
/// IPv6 server with a port is written in brackets (`[::1]:5353`), and without a port either
/// bare or in brackets (`::1`, `[::1]`). `SUFFIX` may be `.` to replace the system servers for
/// all other names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteOverride {
    pub suffix: Suffix,
    pub servers: Vec<SocketAddr>,
}

/// Error of parsing a `--dns` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteOverrideError {
    #[error("invalid --dns value {input:?}: expected SUFFIX=IP[:PORT][,IP[:PORT]...]")]
    MissingEquals { input: String },
    #[error("invalid --dns value {input:?}: {source}")]
    BadSuffix {
        input: String,
        #[source]
        source: NameError,
    },
    #[error("invalid --dns value {input:?}: no servers after '='")]
    NoServers { input: String },
    #[error(
        "invalid --dns value {input:?}: {server:?} is not IP[:PORT] \
         (the port is 53 when omitted, and an IPv6 server with a port is written as [::1]:5353)"
    )]
    BadServer { input: String, server: String },
}

impl FromStr for RouteOverride {
    type Err = RouteOverrideError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let Some((suffix, servers)) = input.split_once('=') else {
            return Err(RouteOverrideError::MissingEquals {
                input: input.to_owned(),
            });
        };

        let suffix = suffix
            .trim()
            .parse()
            .map_err(|source| RouteOverrideError::BadSuffix {
                input: input.to_owned(),
                source,
            })?;

        if servers.trim().is_empty() {
            return Err(RouteOverrideError::NoServers {
                input: input.to_owned(),
            });
        }
        let servers = servers
            .split(',')
            .map(|server| {
                parse_server(server.trim()).ok_or_else(|| RouteOverrideError::BadServer {
                    input: input.to_owned(),
                    server: server.to_owned(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;

        Ok(Self { suffix, servers })
    }
}

/// Parses `IP:PORT`, `[IPv6]:PORT`, or a bare `IP`, `IPv6` or `[IPv6]` with port 53.
fn parse_server(text: &str) -> Option<SocketAddr> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr);
    }
    parse_ip_literal(text).map(|ip| SocketAddr::new(ip, DNS_PORT))
}

impl<'de> serde::Deserialize<'de> for RouteOverride {
    /// Reads the same text form as the command line, so config files and flags agree.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_parses_several_servers() {
        let route: RouteOverride = "consul=127.0.0.1:8600,[::1]:8600,10.0.0.5".parse().unwrap();
        assert_eq!(route.suffix.as_str(), "consul");
        assert_eq!(
            route.servers,
            vec![
                "127.0.0.1:8600".parse().unwrap(),
                "[::1]:8600".parse().unwrap(),
                "10.0.0.5:53".parse().unwrap(),
            ]
        );
    }

    #[test]
    fn override_server_forms() {
        let cases = [
            ("127.0.0.1", "127.0.0.1:53"),
            ("127.0.0.1:5353", "127.0.0.1:5353"),
            ("::1", "[::1]:53"),
            ("[::1]", "[::1]:53"),
            ("[::1]:5353", "[::1]:5353"),
            ("fe80::1", "[fe80::1]:53"),
        ];
        for (server, expected) in cases {
            let route: RouteOverride = format!("consul={server}").parse().unwrap();
            let expected: SocketAddr = expected.parse().unwrap();
            assert_eq!(route.servers, vec![expected], "{server}");
        }
    }

    #[test]
    fn override_accepts_root_suffix() {
        let route: RouteOverride = ".=127.0.0.1:5353".parse().unwrap();
        assert_eq!(route.suffix, Suffix::root());
    }

    #[test]
    fn override_rejects_malformed_values() {
        let cases = [
            ("consul", "expected SUFFIX=IP[:PORT]"),
            ("=127.0.0.1:53", "the name is empty"),
            ("con sul=127.0.0.1:53", "may contain only"),
            ("consul=", "no servers"),
            ("consul=127.0.0.1:53,", "\"\" is not IP[:PORT]"),
            ("consul=localhost:53", "\"localhost:53\" is not IP[:PORT]"),
            (
                "consul=localhost",
                "\"localhost\" is not IP[:PORT] (the port is 53 when omitted",
            ),
            ("consul=::1:53:x", "is not IP[:PORT]"),
            ("consul=[::1]:x", "is not IP[:PORT]"),
            ("consul=[127.0.0.1]:53", "is not IP[:PORT]"),
            ("consul=127.0.0.1:99999", "is not IP[:PORT]"),
        ];
        for (input, expected) in cases {
            let message = input.parse::<RouteOverride>().unwrap_err().to_string();
            assert!(message.contains(expected), "{input}: {message}");
            assert!(
                message.contains(&format!("{input:?}")),
                "{input}: {message}"
            );
        }
    }

    #[test]
    fn override_replaces_existing_route() {
        let mut config = ResolverConfig::default();
        config.apply_override("consul=127.0.0.1:5353".parse().unwrap());
        config.apply_override("example.com=127.0.0.1:5354".parse().unwrap());

        let consul = config
            .routes
            .iter()
            .find(|r| r.suffix.as_str() == "consul")
            .unwrap();
        assert_eq!(
            consul.servers,
            Servers::Static(vec!["127.0.0.1:5353".parse().unwrap()])
        );
        assert!(consul.srv_over_tcp);
        assert_eq!(config.routes.len(), 4);
    }

    #[test]
    fn consul_routes_get_consul_defaults() {
        let below: Suffix = "service.consul".parse().unwrap();
        let route = RouteConfig::new(below, Servers::System);
        assert!(route.srv_over_tcp);
        assert_eq!(route.max_negative_ttl, Duration::from_secs(5));

        let other = RouteConfig::new("xconsul".parse().unwrap(), Servers::System);
        assert!(!other.srv_over_tcp);
        assert_eq!(other.max_negative_ttl, Duration::from_secs(300));
    }

    #[test]
    fn override_deserializes_from_string() {
        let routes: Vec<RouteOverride> =
            serde_json::from_str(r#"["consul=127.0.0.1:8600"]"#).unwrap();
        assert_eq!(routes[0].servers, vec!["127.0.0.1:8600".parse().unwrap()]);

        let error = serde_json::from_str::<RouteOverride>(r#""consul""#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("expected SUFFIX=IP[:PORT]"), "{error}");
    }
}

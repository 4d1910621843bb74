//! Split DNS for Styx: names under `ts.net` go to MagicDNS, names under `consul` to the local
//! Consul agent, everything else to the system's servers, each route with its own upstream
//! servers and the longest matching suffix winning.
//!
//! The resolver is built on hickory-resolver with a cache of its own in front, so TTL-0
//! answers (Consul's default) are reused for a short floor, negative answers are cached per
//! their SOA with a cap per route, and a dead server delays answers by at most one hedge delay
//! (100 ms by default) until it is demoted. It is in-process: it does not read `/etc/resolver` files or ask the macOS system resolver, and
//! it is not a DNS server.
//!
//! Layout:
//! - [`name`]: name validation and route suffixes.
//! - [`config`]: routes, timeouts, TTL policy, and the `--dns` override parser.
//! - [`resolver`]: [`SplitResolver`], routing, caching and shared lookups.
//! - `upstream`: the servers of one route, hedged queries and demotion.
//! - `cache`: the answer cache.
//! - [`answer`]: query types and lookup results.
//! - [`error`]: lookup errors.
//! - [`metrics`]: metric names.
//! - [`watch`]: [`UpstreamName`] and the address watcher the proxy forwards through.
//! - [`cli`]: the `resolve` subcommand.
//!
//! Use from the proxy, with the default routes and one `--dns` override:
//!
//! ```no_run
//! use styx_dns::{AddressWatch, ResolverConfig, SplitResolver, UpstreamName};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = ResolverConfig::default();
//! config.apply_override("consul=127.0.0.1:8600".parse()?);
//! let resolver = SplitResolver::new(config)?;
//!
//! let upstream: UpstreamName = "srv:web.service.consul".parse()?;
//! let watch = AddressWatch::spawn(resolver, upstream);
//! watch.ready().await;
//! if let Some(addr) = watch.next_addr() {
//!     println!("connect to {addr}");
//! }
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod answer;
mod cache;
pub mod cli;
pub mod config;
pub mod error;
pub mod metrics;
pub mod name;
pub mod resolver;
mod upstream;
pub mod watch;

pub use answer::{IpFamily, IpLookup, QueryType, SrvLookup, SrvRecord};
pub use config::{ResolverConfig, RouteConfig, RouteOverride, Servers};
pub use error::ResolveError;
pub use resolver::SplitResolver;
pub use watch::{AddressWatch, UpstreamName};

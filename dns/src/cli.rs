//! The `resolve` subcommand: looks a name up through the in-process resolver and returns
//! the text to print. The proxy's `main` parses [`ResolveArgs`] and calls [`run`].

use std::time::Duration;

use clap::Args;
use serde::Serialize;

use crate::answer::{IpFamily, QueryType, SrvRecord};
use crate::config::{ResolverConfig, RouteOverride};
use crate::error::ResolveError;
use crate::resolver::{BuildError, SplitResolver};

/// Look a name up as Styx does, through the split resolver.
#[derive(Debug, Clone, Args)]
pub struct ResolveArgs {
    /// Name to look up, such as web.service.consul or mac-a.example.ts.net.
    #[arg(value_name = "NAME")]
    pub name: String,

    /// Record type to ask for.
    #[arg(long = "type", value_enum, default_value_t = QueryType::A)]
    pub query_type: QueryType,

    /// Send names under SUFFIX to these servers instead of the route's defaults, given as
    /// SUFFIX=IP[:PORT][,IP[:PORT]...]. A server without a port gets port 53. Write an IPv6
    /// server with a port as [::1]:5353. The suffix `.` covers all other names. Repeatable.
    #[arg(long = "dns", value_name = "SUFFIX=IP[:PORT][,IP[:PORT]...]")]
    pub dns: Vec<RouteOverride>,

    /// Print one JSON object instead of one record per line.
    #[arg(long)]
    pub json: bool,

    /// How long each upstream server gets to answer, in milliseconds.
    #[arg(long = "timeout-ms", value_name = "MS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub timeout_ms: u64,
}

/// Error of the `resolve` subcommand.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
}

#[derive(Serialize)]
struct JsonOutput<'a> {
    name: &'a str,
    #[serde(rename = "type")]
    query_type: QueryType,
    #[serde(skip_serializing_if = "Option::is_none")]
    addresses: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    records: Option<&'a [SrvRecord]>,
}

/// Looks up `args.name` and returns the text to print, ending with a newline.
///
/// Each record gets one line. An A or AAAA line is the address. An SRV line is
/// `priority weight port target` followed by the target's addresses. With `--json` the output
/// is one JSON object instead.
///
/// # Errors
///
/// Returns an error naming the name when it does not exist, has no records of the type, or
/// no upstream server answered. Also fails when the resolver cannot be built.
pub async fn run(args: &ResolveArgs) -> Result<String, RunError> {
    let mut config = ResolverConfig {
        server_timeout: Duration::from_millis(args.timeout_ms),
        ..ResolverConfig::default()
    };
    for route in &args.dns {
        config.apply_override(route.clone());
    }
    let resolver = SplitResolver::new(config)?;

    let name = args.name.as_str();
    let mut output = match args.query_type {
        QueryType::A | QueryType::Aaaa => {
            let family = if args.query_type == QueryType::A {
                IpFamily::V4
            } else {
                IpFamily::V6
            };
            let found = resolver.lookup_ip(name, family).await?;
            let addrs: Vec<String> = found.addrs.iter().map(ToString::to_string).collect();
            if args.json {
                to_json(name, args.query_type, Some(addrs), None)
            } else {
                addrs.join("\n")
            }
        }
        QueryType::Srv => {
            let found = resolver.lookup_srv(name).await?;
            if args.json {
                to_json(name, args.query_type, None, Some(&found.records))
            } else {
                found
                    .records
                    .iter()
                    .map(srv_line)
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        }
    };
    output.push('\n');
    Ok(output)
}

fn srv_line(record: &SrvRecord) -> String {
    let mut line = format!(
        "{} {} {} {}",
        record.priority, record.weight, record.port, record.target
    );
    for addr in &record.addrs {
        line.push(' ');
        line.push_str(&addr.to_string());
    }
    line
}

fn to_json(
    name: &str,
    query_type: QueryType,
    addresses: Option<Vec<String>>,
    records: Option<&[SrvRecord]>,
) -> String {
    let output = JsonOutput {
        name,
        query_type,
        addresses,
        records,
    };
    serde_json::to_string(&output).expect("the output contains only strings and numbers")
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Command {
        #[command(flatten)]
        args: ResolveArgs,
    }

    fn parse(argv: &[&str]) -> Result<ResolveArgs, String> {
        let argv = std::iter::once("resolve").chain(argv.iter().copied());
        Command::try_parse_from(argv)
            .map(|c| c.args)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn args_parse_all_flags() {
        let args = parse(&[
            "web.service.consul",
            "--type",
            "srv",
            "--dns",
            "consul=127.0.0.1:8600",
            "--dns",
            "ts.net=127.0.0.1:5353",
            "--json",
            "--timeout-ms",
            "200",
        ])
        .unwrap();
        assert_eq!(args.query_type, QueryType::Srv);
        assert_eq!(args.dns.len(), 2);
        assert!(args.json);
        assert_eq!(args.timeout_ms, 200);
    }

    #[test]
    fn args_reject_malformed_dns() {
        let message = parse(&["web.service.consul", "--dns", "consul"]).unwrap_err();
        assert!(message.contains("expected SUFFIX=IP[:PORT]"), "{message}");
    }

    #[test]
    fn args_dns_port_optional() {
        let args = parse(&[
            "web.service.consul",
            "--dns",
            "consul=127.0.0.1",
            "--dns",
            "ts.net=::1",
            "--dns",
            ".=[::1]:5353",
        ])
        .unwrap();
        let servers: Vec<String> = args
            .dns
            .iter()
            .map(|route| route.servers[0].to_string())
            .collect();
        assert_eq!(servers, ["127.0.0.1:53", "[::1]:53", "[::1]:5353"]);
    }

    #[test]
    fn help_shows_optional_port() {
        let help = Command::try_parse_from(["resolve", "--help"])
            .unwrap_err()
            .to_string();
        assert!(help.contains("SUFFIX=IP[:PORT][,IP[:PORT]...]"), "{help}");
        assert!(help.contains("gets port 53"), "{help}");
    }

    #[test]
    fn args_reject_bad_type_and_timeout() {
        assert!(parse(&["x.consul", "--type", "mx"]).is_err());
        assert!(parse(&["x.consul", "--timeout-ms", "0"]).is_err());
    }

    #[test]
    fn srv_line_lists_addresses() {
        let record = SrvRecord {
            priority: 1,
            weight: 2,
            port: 8080,
            target: "node1.node.consul".to_owned(),
            addrs: vec!["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()],
        };
        assert_eq!(
            srv_line(&record),
            "1 2 8080 node1.node.consul 10.0.0.1 10.0.0.2"
        );
    }

    #[tokio::test]
    async fn run_rejects_empty_name() {
        let args = parse(&["", "--dns", ".=127.0.0.1:9"]).unwrap();
        let message = run(&args).await.unwrap_err().to_string();
        assert_eq!(message, "invalid name: the name is empty");
    }
}

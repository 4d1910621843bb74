//! Lookup results: query types, address sets and SRV records, and the conversion of an
//! upstream response into the cached form.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use serde::Serialize;

/// The record types this resolver looks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum QueryType {
    A,
    Aaaa,
    Srv,
}

impl QueryType {
    /// All types, in the order of [`Self::index`].
    pub const ALL: [Self; 3] = [Self::A, Self::Aaaa, Self::Srv];

    /// Returns the value of the `type` metrics label, which messages use too.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::A => "A",
            Self::Aaaa => "AAAA",
            Self::Srv => "SRV",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn record_type(self) -> RecordType {
        match self {
            Self::A => RecordType::A,
            Self::Aaaa => RecordType::AAAA,
            Self::Srv => RecordType::SRV,
        }
    }
}

impl fmt::Display for QueryType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for QueryType {
    type Err = String;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        match input.to_ascii_lowercase().as_str() {
            "a" => Ok(Self::A),
            "aaaa" => Ok(Self::Aaaa),
            "srv" => Ok(Self::Srv),
            _ => Err(format!(
                "invalid record type {input:?}: expected a, aaaa or srv"
            )),
        }
    }
}

/// The address family of an address lookup: A records for IPv4, AAAA records for IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn query_type(self) -> QueryType {
        match self {
            Self::V4 => QueryType::A,
            Self::V6 => QueryType::Aaaa,
        }
    }
}

/// Addresses of a name, from A and/or AAAA records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpLookup {
    pub addrs: Vec<IpAddr>,
    /// When the cached answer expires and the next lookup asks upstream again.
    pub valid_until: Instant,
}

/// One SRV record with the addresses of its target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// Target host, without the trailing dot.
    pub target: String,
    /// Addresses of the target: from the additional section when the server sent them
    /// (Consul does), else looked up. Empty when the target has no addresses.
    pub addrs: Vec<IpAddr>,
}

/// SRV records of a name, ordered by priority (lowest first) and then weight (highest first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvLookup {
    pub records: Vec<SrvRecord>,
    /// When the earliest of the answers involved expires.
    pub valid_until: Instant,
}

/// A cached answer: records or a negative answer, and when it expires.
#[derive(Debug)]
pub(crate) struct Entry {
    pub data: EntryData,
    pub valid_until: Instant,
}

#[derive(Debug)]
pub(crate) enum EntryData {
    Ips(Vec<IpAddr>),
    /// SRV records with their glue addresses, each with its target as a [`Name`] for looking up
    /// targets that came without glue.
    Srv(Vec<(SrvRecord, Name)>),
    NxDomain,
    NoRecords,
}

/// The part of an upstream response this crate keeps.
#[derive(Debug)]
pub(crate) enum Response {
    Records {
        answers: Vec<Record>,
        additionals: Vec<Record>,
    },
    Negative {
        nxdomain: bool,
        /// TTL of the negative answer from the SOA, when the server sent one.
        soa_ttl: Option<u32>,
    },
}

/// How long answers are cached.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TtlPolicy {
    pub floor: Duration,
    pub max_positive: Duration,
    pub max_negative: Duration,
}

impl TtlPolicy {
    fn positive(&self, ttl_secs: u32) -> Duration {
        Duration::from_secs(u64::from(ttl_secs))
            .clamp(self.floor, self.max_positive.max(self.floor))
    }

    fn negative(&self, soa_ttl: Option<u32>) -> Duration {
        // A negative answer without an SOA carries no TTL, so it gets only the floor, which
        // still stops a burst of queries for a missing name.
        let ttl = Duration::from_secs(u64::from(soa_ttl.unwrap_or(0)));
        ttl.max(self.floor).min(self.max_negative)
    }
}

/// Converts a response to the cached entry for `query_type`, with its expiry from `now`.
pub(crate) fn to_entry(
    response: Response,
    query_type: QueryType,
    ttl: &TtlPolicy,
    now: Instant,
) -> Entry {
    let (answers, additionals) = match response {
        Response::Negative { nxdomain, soa_ttl } => {
            let data = if nxdomain {
                EntryData::NxDomain
            } else {
                EntryData::NoRecords
            };
            return Entry {
                data,
                valid_until: now + ttl.negative(soa_ttl),
            };
        }
        Response::Records {
            answers,
            additionals,
        } => (answers, additionals),
    };

    // The TTL of a CNAME chain bounds the TTL of the addresses it leads to.
    let min_ttl = answers.iter().map(|record| record.ttl).min().unwrap_or(0);
    let data = match query_type {
        QueryType::A | QueryType::Aaaa => ips_of(&answers, None),
        QueryType::Srv => srv_of(&answers, &additionals),
    };
    let data = data.unwrap_or(EntryData::NoRecords);
    let valid_until = match data {
        EntryData::NoRecords => now + ttl.negative(None),
        _ => now + ttl.positive(min_ttl),
    };
    Entry { data, valid_until }
}

fn ips_of(records: &[Record], owner: Option<&Name>) -> Option<EntryData> {
    let addrs = addresses(records, owner);
    (!addrs.is_empty()).then_some(EntryData::Ips(addrs))
}

/// Collects the addresses in `records`, of any owner or only of `owner`.
fn addresses(records: &[Record], owner: Option<&Name>) -> Vec<IpAddr> {
    records
        .iter()
        .filter(|record| owner.is_none_or(|owner| record.name == *owner))
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .collect()
}

fn srv_of(answers: &[Record], additionals: &[Record]) -> Option<EntryData> {
    let mut records: Vec<(SrvRecord, Name)> = answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::SRV(srv) => Some(srv),
            _ => None,
        })
        .map(|srv| {
            let record = SrvRecord {
                priority: srv.priority,
                weight: srv.weight,
                port: srv.port,
                target: display_name(&srv.target),
                addrs: addresses(additionals, Some(&srv.target)),
            };
            (record, srv.target.clone())
        })
        .collect();

    if records.is_empty() {
        return None;
    }
    records.sort_by(|(a, _), (b, _)| a.priority.cmp(&b.priority).then(b.weight.cmp(&a.weight)));
    Some(EntryData::Srv(records))
}

/// Formats a name without the trailing dot.
pub(crate) fn display_name(name: &Name) -> String {
    let mut text = name.to_ascii();
    if text.len() > 1 && text.ends_with('.') {
        text.pop();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use hickory_resolver::proto::rr::rdata::{A, AAAA, CNAME, SRV};

    use super::*;

    fn name(text: &str) -> Name {
        Name::from_ascii(text).unwrap()
    }

    fn policy() -> TtlPolicy {
        TtlPolicy {
            floor: Duration::from_secs(1),
            max_positive: Duration::from_secs(3600),
            max_negative: Duration::from_secs(5),
        }
    }

    #[test]
    fn ttl_zero_gets_floor() {
        let now = Instant::now();
        let answers = vec![
            Record::from_rdata(
                name("web.consul."),
                0,
                RData::A(A(Ipv4Addr::new(10, 0, 0, 1))),
            ),
            Record::from_rdata(
                name("web.consul."),
                0,
                RData::AAAA(AAAA(Ipv6Addr::LOCALHOST)),
            ),
        ];
        let response = Response::Records {
            answers,
            additionals: vec![],
        };
        let entry = to_entry(response, QueryType::A, &policy(), now);

        assert_eq!(entry.valid_until, now + Duration::from_secs(1));
        let EntryData::Ips(addrs) = entry.data else {
            panic!("expected addresses")
        };
        assert_eq!(addrs.len(), 2);
    }

    #[test]
    fn cname_ttl_bounds_answer() {
        let now = Instant::now();
        let answers = vec![
            Record::from_rdata(
                name("a.example."),
                7,
                RData::CNAME(CNAME(name("b.example."))),
            ),
            Record::from_rdata(
                name("b.example."),
                600,
                RData::A(A(Ipv4Addr::new(10, 0, 0, 2))),
            ),
        ];
        let response = Response::Records {
            answers,
            additionals: vec![],
        };
        let entry = to_entry(response, QueryType::A, &policy(), now);
        assert_eq!(entry.valid_until, now + Duration::from_secs(7));
    }

    #[test]
    fn negative_ttl_capped_by_route() {
        let now = Instant::now();
        let long = to_entry(
            Response::Negative {
                nxdomain: true,
                soa_ttl: Some(900),
            },
            QueryType::A,
            &policy(),
            now,
        );
        assert_eq!(long.valid_until, now + Duration::from_secs(5));
        assert!(matches!(long.data, EntryData::NxDomain));

        let none = to_entry(
            Response::Negative {
                nxdomain: false,
                soa_ttl: None,
            },
            QueryType::A,
            &policy(),
            now,
        );
        assert_eq!(none.valid_until, now + Duration::from_secs(1));
        assert!(matches!(none.data, EntryData::NoRecords));
    }

    #[test]
    fn srv_takes_glue_and_sorts() {
        let now = Instant::now();
        let srv = |priority, weight, port, target: &str| {
            Record::from_rdata(
                name("web.consul."),
                0,
                RData::SRV(SRV::new(priority, weight, port, name(target))),
            )
        };
        let answers = vec![
            srv(2, 1, 8081, "b.node.consul."),
            srv(1, 1, 8080, "a.node.consul."),
        ];
        let additionals = vec![Record::from_rdata(
            name("a.node.consul."),
            0,
            RData::A(A(Ipv4Addr::new(10, 0, 0, 3))),
        )];
        let entry = to_entry(
            Response::Records {
                answers,
                additionals,
            },
            QueryType::Srv,
            &policy(),
            now,
        );

        let EntryData::Srv(records) = entry.data else {
            panic!("expected SRV records")
        };
        assert_eq!(records[0].0.port, 8080);
        assert_eq!(records[0].0.target, "a.node.consul");
        assert_eq!(
            records[0].0.addrs,
            vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3))]
        );
        assert!(records[1].0.addrs.is_empty(), "b has no glue");
    }

    #[test]
    fn query_type_parses_case_insensitively() {
        assert_eq!("SRV".parse::<QueryType>(), Ok(QueryType::Srv));
        assert!(
            "mx".parse::<QueryType>()
                .unwrap_err()
                .contains("expected a, aaaa or srv")
        );
    }
}

//! Metric names and per-route handles.
//!
//! Labels are bounded: `route` is a suffix from the configuration, `type` is one of
//! [`QueryType`], `outcome` one of [`Outcome`] and `kind` one of [`UpstreamErrorKind`].
//! Handles are resolved once when a resolver is built, so install the metrics recorder
//! before building a [`crate::SplitResolver`]: handles taken earlier record nothing.

use metrics::{Counter, Histogram, Unit, counter, describe_counter, describe_histogram, histogram};

use crate::answer::QueryType;
use crate::error::UpstreamErrorKind;

/// Lookups, by `route`, `type` and `outcome`.
pub const QUERIES_TOTAL: &str = "styx_dns_queries_total";
/// Lookups answered from the cache, by `route` and `type`.
pub const CACHE_HITS_TOTAL: &str = "styx_dns_cache_hits_total";
/// Lookups not in the cache, by `route` and `type`. Concurrent identical misses share one
/// upstream request.
pub const CACHE_MISSES_TOTAL: &str = "styx_dns_cache_misses_total";
/// Queries sent to upstream servers, by `route`. A hedged lookup counts once per server asked.
pub const UPSTREAM_QUERIES_TOTAL: &str = "styx_dns_upstream_queries_total";
/// Upstream servers that gave no usable answer, by `route` and `kind`.
pub const UPSTREAM_ERRORS_TOTAL: &str = "styx_dns_upstream_errors_total";
/// Lookup duration in seconds, cache hits included, by `route` and `type`.
pub const QUERY_DURATION_SECONDS: &str = "styx_dns_query_duration_seconds";

/// Registers descriptions of this crate's metrics with the installed recorder. Call once at
/// startup, after installing the recorder.
pub fn describe() {
    describe_counter!(
        QUERIES_TOTAL,
        Unit::Count,
        "DNS lookups by route, record type and outcome"
    );
    describe_counter!(
        CACHE_HITS_TOTAL,
        Unit::Count,
        "DNS lookups answered from the cache"
    );
    describe_counter!(
        CACHE_MISSES_TOTAL,
        Unit::Count,
        "DNS lookups not found in the cache"
    );
    describe_counter!(
        UPSTREAM_QUERIES_TOTAL,
        Unit::Count,
        "DNS queries sent to upstream servers"
    );
    describe_counter!(
        UPSTREAM_ERRORS_TOTAL,
        Unit::Count,
        "upstream DNS servers that gave no usable answer"
    );
    describe_histogram!(QUERY_DURATION_SECONDS, Unit::Seconds, "DNS lookup duration");
}

/// Result of one lookup, the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Records found.
    Answer,
    /// The name does not exist.
    NxDomain,
    /// The name exists without records of the type.
    NoRecords,
    /// No upstream server answered.
    Error,
}

impl Outcome {
    const ALL: [Self; 4] = [Self::Answer, Self::NxDomain, Self::NoRecords, Self::Error];

    pub fn as_metrics_label(self) -> &'static str {
        match self {
            Self::Answer => "answer",
            Self::NxDomain => "nxdomain",
            Self::NoRecords => "no_records",
            Self::Error => "error",
        }
    }
}

/// Handles of one route, one per label combination.
#[derive(Debug)]
pub(crate) struct RouteMetrics {
    queries: [[Counter; 4]; 3],
    cache_hits: [Counter; 3],
    cache_misses: [Counter; 3],
    duration: [Histogram; 3],
    upstream_queries: Counter,
    upstream_errors: [Counter; 6],
}

impl RouteMetrics {
    pub fn new(route: &str) -> Self {
        let route = route.to_owned();
        let per_type = |name: &'static str| {
            QueryType::ALL.map(|t| counter!(name, "route" => route.clone(), "type" => t.as_str()))
        };

        Self {
            queries: QueryType::ALL.map(|t| {
                Outcome::ALL.map(|o| {
                    counter!(QUERIES_TOTAL, "route" => route.clone(), "type" => t.as_str(), "outcome" => o.as_metrics_label())
                })
            }),
            cache_hits: per_type(CACHE_HITS_TOTAL),
            cache_misses: per_type(CACHE_MISSES_TOTAL),
            duration: QueryType::ALL
                .map(|t| histogram!(QUERY_DURATION_SECONDS, "route" => route.clone(), "type" => t.as_str())),
            upstream_queries: counter!(UPSTREAM_QUERIES_TOTAL, "route" => route.clone()),
            upstream_errors: UpstreamErrorKind::ALL
                .map(|k| counter!(UPSTREAM_ERRORS_TOTAL, "route" => route.clone(), "kind" => k.as_metrics_label())),
        }
    }

    pub fn query(&self, query_type: QueryType, outcome: Outcome, seconds: f64) {
        let index = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        self.queries[query_type.index()][index].increment(1);
        self.duration[query_type.index()].record(seconds);
    }

    pub fn cache_hit(&self, query_type: QueryType) {
        self.cache_hits[query_type.index()].increment(1);
    }

    pub fn cache_miss(&self, query_type: QueryType) {
        self.cache_misses[query_type.index()].increment(1);
    }

    pub fn upstream_query(&self) {
        self.upstream_queries.increment(1);
    }

    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors[kind.index()].increment(1);
    }
}

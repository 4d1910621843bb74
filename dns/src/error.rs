//! Errors of lookups, with a classification that decides metrics labels and demotion.

use std::fmt;
use std::net::SocketAddr;

use crate::answer::QueryType;
use crate::name::NameError;

/// Failure class of one upstream server's reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamErrorKind {
    /// No answer within the per-server timeout.
    Timeout,
    /// The server returned REFUSED.
    Refused,
    /// The server returned SERVFAIL or another error code.
    ServerFailure,
    /// The answer was truncated even over TCP.
    Truncated,
    /// A socket error, such as a refused TCP connection.
    Io,
    /// A malformed or unexpected answer.
    Protocol,
}

impl UpstreamErrorKind {
    /// All kinds, in the order of [`Self::index`].
    pub const ALL: [Self; 6] = [
        Self::Timeout,
        Self::Refused,
        Self::ServerFailure,
        Self::Truncated,
        Self::Io,
        Self::Protocol,
    ];

    /// Returns the value of the `kind` label of [`crate::metrics::UPSTREAM_ERRORS_TOTAL`].
    pub fn as_metrics_label(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Refused => "refused",
            Self::ServerFailure => "server_failure",
            Self::Truncated => "truncated",
            Self::Io => "io",
            Self::Protocol => "protocol",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Timeout => "timed out",
            Self::Refused => "refused the query",
            Self::ServerFailure => "returned a server failure",
            Self::Truncated => "returned a truncated answer",
            Self::Io => "failed with a socket error",
            Self::Protocol => "returned an invalid answer",
        }
    }
}

/// One server's failure within a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFailure {
    pub server: SocketAddr,
    pub kind: UpstreamErrorKind,
}

/// The failures of every server tried, shown as `127.0.0.1:53 timed out, ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFailures(pub Vec<ServerFailure>);

impl fmt::Display for ServerFailures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, failure) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{} {}", failure.server, failure.kind.describe())?;
        }
        Ok(())
    }
}

/// Error of a lookup.
///
/// Names in messages are written without the trailing dot, as users type them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    InvalidName(#[from] NameError),
    #[error("{name} does not exist (NXDOMAIN)")]
    NxDomain { name: String },
    #[error("{name} has no {query_type} records")]
    NoRecords { name: String, query_type: QueryType },
    #[error("failed to resolve {name}: no upstream server answered ({failures})")]
    Unreachable {
        name: String,
        failures: ServerFailures,
    },
    #[error("failed to resolve {name}: route {route} has no upstream servers")]
    NoServers { name: String, route: String },
}

impl ResolveError {
    /// Returns true when an upstream server answered that the name or the records do not
    /// exist, as opposed to no server answering at all.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NxDomain { .. } | Self::NoRecords { .. })
    }
}

//! Detection of a missing macOS Local Network permission.
//!
//! Since macOS 15, a process that dials an address on a local network needs the user's
//! approval. Until it is granted, `connect()` fails at once with EHOSTUNREACH, and a
//! headless Mac never shows the prompt. The driver's proxies dial container addresses
//! on the vmnet subnet, so the check dials the vmnet gateway: a refused or accepted
//! connection proves the permission, EHOSTUNREACH suggests it is missing.
//!
//! On other systems there is no such permission and [`check`] returns
//! [`LocalNetwork::NotApplicable`] without touching the network.

use std::io;

/// Outcome of the Local Network permission check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalNetwork {
    Allowed,
    /// The dial failed in the way a missing permission makes it fail.
    Denied {
        detail: String,
    },
    /// The check could not decide, for example because the dial timed out.
    Unknown,
    NotApplicable,
}

/// Classifies the result of dialing the vmnet gateway.
#[cfg_attr(not(target_os = "macos"), allow(dead_code))]
pub fn classify(result: &io::Result<()>) -> LocalNetwork {
    match result {
        Ok(()) => LocalNetwork::Allowed,
        Err(error) => match error.kind() {
            io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset => {
                LocalNetwork::Allowed
            }
            io::ErrorKind::HostUnreachable => LocalNetwork::Denied {
                detail: format!("dialing the container network failed: {error}"),
            },
            _ => LocalNetwork::Unknown,
        },
    }
}

#[cfg(target_os = "macos")]
pub async fn check() -> LocalNetwork {
    use std::net::{Ipv4Addr, SocketAddr};
    use std::time::Duration;

    // NOTE: 192.168.64.1 is the vmnet gateway on macOS 15. On macOS 26 vmnet may pick
    // another subnet, and then EHOSTUNREACH can also mean that nothing routes there.
    // Reading the gateway from `container network inspect default` would fix that.
    const VMNET_GATEWAY: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(192, 168, 64, 1)), 53);
    const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

    let dial = tokio::net::TcpStream::connect(VMNET_GATEWAY);
    match tokio::time::timeout(DIAL_TIMEOUT, dial).await {
        Ok(result) => classify(&result.map(drop)),
        Err(_) => LocalNetwork::Unknown,
    }
}

#[cfg(not(target_os = "macos"))]
pub async fn check() -> LocalNetwork {
    LocalNetwork::NotApplicable
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_unreachable_means_denied() {
        let result = Err(io::Error::from(io::ErrorKind::HostUnreachable));
        assert!(matches!(classify(&result), LocalNetwork::Denied { .. }));
    }

    #[test]
    fn refused_or_connected_means_allowed() {
        assert_eq!(classify(&Ok(())), LocalNetwork::Allowed);
        let refused = Err(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(classify(&refused), LocalNetwork::Allowed);
    }

    #[test]
    fn timeout_is_unknown() {
        let result = Err(io::Error::from(io::ErrorKind::TimedOut));
        assert_eq!(classify(&result), LocalNetwork::Unknown);
    }

    #[cfg(not(target_os = "macos"))]
    #[tokio::test]
    async fn check_elsewhere_is_not_applicable() {
        assert_eq!(check().await, LocalNetwork::NotApplicable);
    }
}

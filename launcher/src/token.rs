//! Invite tokens and the messages of the invite protocol.
//!
//! A token is `styx1.` followed by unpadded base64url of a JSON object with the invite
//! endpoint's address, the SHA-256 fingerprint of the cluster CA certificate (the joiner
//! pins it), a 32-byte random secret, and the expiry time. The protocol is one JSON line
//! each way over TLS: the joiner sends a [`JoinRequest`], the server replies with a
//! [`JoinReply`].

use std::net::{IpAddr, SocketAddr};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

/// Prefix and version of the token format.
pub const TOKEN_PREFIX: &str = "styx1.";
/// Maximum message size accepted in either direction, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// An invite token's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteToken {
    /// Address of the invite endpoint.
    pub address: SocketAddr,
    /// SHA-256 of the cluster CA certificate's DER, lowercase hex.
    pub ca_sha256: String,
    /// Base64url of 32 random bytes.
    pub secret: String,
    /// Expiry, in seconds since the Unix epoch.
    pub expires_at: u64,
}

/// Failure to decode a token.
#[derive(Debug, thiserror::Error)]
#[error("invalid invite token: {reason}; copy the whole `styx join` line printed by `styx invite`")]
pub struct TokenError {
    reason: String,
}

impl InviteToken {
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("a token always serializes");
        format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
    }

    pub fn decode(text: &str) -> Result<Self, TokenError> {
        let fail = |reason: &str| TokenError {
            reason: reason.to_owned(),
        };
        let body = text
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .ok_or_else(|| fail("it does not start with styx1."))?;
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| fail("it is not valid base64url"))?;
        let token: Self =
            serde_json::from_slice(&json).map_err(|_| fail("its content is not a Styx invite"))?;

        let fingerprint_valid =
            token.ca_sha256.len() == 64 && token.ca_sha256.bytes().all(|b| b.is_ascii_hexdigit());
        if !fingerprint_valid {
            return Err(fail("the CA fingerprint is not 64 hex digits"));
        }
        if URL_SAFE_NO_PAD
            .decode(&token.secret)
            .map(|secret| secret.len())
            != Ok(32)
        {
            return Err(fail("the secret is not 32 bytes"));
        }
        Ok(token)
    }
}

/// The joiner's request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub secret: String,
    pub node_name: String,
    /// The joiner's Tailscale IPv4 address, put in its certificate.
    pub tailscale_ip: IpAddr,
    /// The joiner's MagicDNS name, put in its certificate; may be empty.
    pub dns_name: String,
    /// PEM certificate signing request; only its public key is used.
    pub csr_pem: String,
}

/// Cluster material a joiner needs to become a client node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinBundle {
    pub ca_pem: String,
    /// Certificate for the joiner's key, signed by the cluster CA.
    pub cert_pem: String,
    pub consul_gossip_key: String,
    pub region: String,
    pub datacenter: String,
    /// Tailscale address of the server node.
    pub server_ip: IpAddr,
}

/// The server's reply to a join request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinReply {
    Accepted(Box<JoinBundle>),
    Rejected { reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> InviteToken {
        InviteToken {
            address: "127.0.0.1:4650".parse().unwrap(),
            ca_sha256: "ab".repeat(32),
            secret: URL_SAFE_NO_PAD.encode([7u8; 32]),
            expires_at: 1_900_000_000,
        }
    }

    #[test]
    fn token_round_trips() {
        let token = sample();

        let decoded = InviteToken::decode(&token.encode()).unwrap();

        assert_eq!(decoded, token);
    }

    #[test]
    fn token_with_short_secret_is_rejected() {
        let mut token = sample();
        token.secret = URL_SAFE_NO_PAD.encode([7u8; 8]);

        let error = InviteToken::decode(&token.encode()).unwrap_err();

        assert!(error.to_string().contains("32 bytes"), "{error}");
    }

    #[test]
    fn garbage_token_is_rejected() {
        let error = InviteToken::decode("hello").unwrap_err();

        assert!(error.to_string().contains("styx1."), "{error}");
    }
}

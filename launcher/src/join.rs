//! `styx join <token>`: fetch the cluster bundle from an invite endpoint, pinning the CA
//! fingerprint in the token, and set this Mac up as a client node.
//!
//! The joiner generates its own key and sends only a certificate signing request, so no
//! private key crosses the network. Nothing is written until the bundle has arrived and
//! checks out.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::cli::JoinArgs;
use crate::configs::GossipKeys;
use crate::files;
use crate::install::{self, Staging};
use crate::invite::format_time;
use crate::layout::Layout;
use crate::pki;
use crate::setup;
use crate::state::{self, NodeState, Role};
use crate::tailscale::{self, TailscaleNode};
use crate::tls::{PinOutcome, PinnedCaVerifier};
use crate::token::{InviteToken, JoinBundle, JoinReply, JoinRequest, MAX_MESSAGE_BYTES};

/// Time limit for connecting to the invite endpoint and receiving its reply.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Failure to obtain the bundle. Each message ends by saying that nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(
        "the invite token expired at {at}: run `styx invite` on the server for a new one; nothing was written"
    )]
    Expired { at: String },
    #[error(
        "the invite endpoint at {address} presented a CA certificate that does not match the token \
         (expected SHA-256 {expected}, received {presented}): the token may belong to another \
         cluster, or the connection is being intercepted; nothing was written"
    )]
    PinMismatch {
        address: String,
        expected: String,
        presented: String,
    },
    #[error(
        "failed to reach the invite endpoint at {address}: {reason}; check that `styx invite` is still running on the server; nothing was written"
    )]
    Unreachable { address: String, reason: String },
    #[error("the invite endpoint rejected the token: {reason}; nothing was written")]
    Rejected { reason: String },
    #[error("invalid answer from the invite endpoint at {address}: {reason}; nothing was written")]
    InvalidAnswer { address: String, reason: String },
}

/// Runs `styx join`.
pub async fn run(args: &JoinArgs, layout: &Layout) -> anyhow::Result<()> {
    let token = InviteToken::decode(&args.token)?;
    check_not_expired(&token, SystemTime::now())?;
    if let Some(name) = &args.node_name {
        state::validate_name("node name", name).map_err(anyhow::Error::msg)?;
    }
    install::check_existing(layout, args.setup.force)?;

    let node = tailscale::detect().await?;
    let binaries = setup::find_binaries(Role::Client)?;
    let node_name = args
        .node_name
        .clone()
        .unwrap_or_else(|| state::node_name_from_host(&node.host_name));

    let (csr_pem, key_pem) = pki::create_request(&node_name)?;
    let bundle = fetch_bundle(&token, &node, &node_name, csr_pem).await?;
    println!("received the cluster bundle from {}", token.address);

    let state = NodeState {
        role: Role::Client,
        node_name,
        region: bundle.region.clone(),
        datacenter: bundle.datacenter.clone(),
        tailscale_ip: node.ipv4,
        tailscale_dns_name: node.dns_name.clone(),
        server_ip: bundle.server_ip,
        container_path: setup::container_path(),
        binaries,
        styx_version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let keys = GossipKeys {
        consul: bundle.consul_gossip_key.clone(),
        nomad: None,
    };

    let staging = Staging::create(layout)?;
    let staged = (|| -> Result<(), setup::SetupError> {
        staging.write(
            &layout.cert("ca"),
            bundle.ca_pem.as_bytes(),
            files::MODE_PUBLIC,
        )?;
        staging.write(
            &layout.cert("node"),
            bundle.cert_pem.as_bytes(),
            files::MODE_PUBLIC,
        )?;
        staging.write(&layout.key("node"), key_pem.as_bytes(), files::MODE_SECRET)?;
        staging.write(
            &layout.consul_gossip_key(),
            keys.consul.as_bytes(),
            files::MODE_SECRET,
        )?;
        setup::stage_node(&staging, &state, layout, &keys)?;
        Ok(())
    })();
    if let Err(error) = staged {
        staging.discard();
        return Err(anyhow::Error::from(error).context(
            "failed to write the client setup, and nothing was kept; the invite use was \
             consumed, so run `styx invite` on the server for a new token",
        ));
    }
    setup::commit_and_start(staging, &state, layout, &args.setup).await?;

    if !args.setup.no_start {
        println!("node {} is registered with the cluster", state.node_name);
    }
    println!("check it with `styx status`");
    Ok(())
}

fn check_not_expired(token: &InviteToken, now: SystemTime) -> Result<(), JoinError> {
    let now = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if now >= token.expires_at {
        let at = UNIX_EPOCH + Duration::from_secs(token.expires_at);
        return Err(JoinError::Expired {
            at: format_time(at),
        });
    }
    Ok(())
}

/// Connects to the invite endpoint, verifies it against the pinned CA, and exchanges
/// the join request for the bundle.
pub async fn fetch_bundle(
    token: &InviteToken,
    node: &TailscaleNode,
    node_name: &str,
    csr_pem: String,
) -> Result<JoinBundle, JoinError> {
    let request = JoinRequest {
        secret: token.secret.clone(),
        node_name: node_name.to_owned(),
        tailscale_ip: node.ipv4,
        dns_name: node.dns_name.clone(),
        csr_pem,
    };
    let verifier = PinnedCaVerifier::new(&token.ca_sha256);
    let address = token.address.to_string();
    let unreachable = |reason: String| JoinError::Unreachable {
        address: address.clone(),
        reason,
    };

    let exchange = async {
        let config = verifier
            .client_config()
            .map_err(|error| unreachable(error.to_string()))?;
        let tcp = TcpStream::connect(token.address)
            .await
            .map_err(|error| unreachable(error.to_string()))?;
        let server_name = ServerName::IpAddress(token.address.ip().into());
        let tls = match TlsConnector::from(std::sync::Arc::new(config))
            .connect(server_name, tcp)
            .await
        {
            Ok(tls) => tls,
            Err(error) => {
                return Err(match verifier.outcome() {
                    Some(PinOutcome::Mismatch { presented }) => JoinError::PinMismatch {
                        address: address.clone(),
                        expected: token.ca_sha256.clone(),
                        presented: presented.join(", "),
                    },
                    _ => unreachable(format!("TLS handshake failed: {error}")),
                });
            }
        };
        exchange(tls, &request, &address).await
    };

    match tokio::time::timeout(EXCHANGE_TIMEOUT, exchange).await {
        Ok(result) => result,
        Err(_) => Err(unreachable(format!(
            "no answer within {} s",
            EXCHANGE_TIMEOUT.as_secs()
        ))),
    }
}

async fn exchange<S>(
    stream: S,
    request: &JoinRequest,
    address: &str,
) -> Result<JoinBundle, JoinError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let invalid = |reason: String| JoinError::InvalidAnswer {
        address: address.to_owned(),
        reason,
    };
    let mut stream = BufReader::new(stream);

    let mut line = serde_json::to_vec(request).expect("a request always serializes");
    line.push(b'\n');
    stream
        .get_mut()
        .write_all(&line)
        .await
        .map_err(|error| invalid(error.to_string()))?;

    let mut answer = Vec::new();
    let read = (&mut stream)
        .take(MAX_MESSAGE_BYTES as u64)
        .read_until(b'\n', &mut answer)
        .await;
    if let Err(error) = read
        && answer.is_empty()
    {
        return Err(invalid(error.to_string()));
    }

    match serde_json::from_slice::<JoinReply>(&answer) {
        Ok(JoinReply::Accepted(bundle)) => Ok(*bundle),
        Ok(JoinReply::Rejected { reason }) => Err(JoinError::Rejected { reason }),
        Err(error) => Err(invalid(error.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_token_is_rejected_before_connecting() {
        let token = InviteToken {
            address: "127.0.0.1:9".parse().unwrap(),
            ca_sha256: "00".repeat(32),
            secret: String::new(),
            expires_at: 1_000,
        };

        let error = check_not_expired(&token, SystemTime::now()).unwrap_err();

        assert!(
            error
                .to_string()
                .contains("expired at 1970-01-01T00:16:40Z"),
            "{error}"
        );
    }
}

//! `styx invite`: a short-lived TLS endpoint that hands a token holder the cluster CA
//! certificate, the Consul gossip key and a client certificate signed for the holder's
//! own key.
//!
//! The endpoint presents a certificate issued by the cluster CA for the listen address,
//! with the CA in its chain, so the joiner can check it against the fingerprint in the
//! token. It serves until every use is spent, the TTL ends or the process is
//! interrupted. Once the last use is spent it accepts no more connections, waits for the
//! connections it has (so the last joiner gets its reply) and exits 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::cli::InviteArgs;
use crate::error_chain;
use crate::layout::Layout;
use crate::pki::{self, Authority, LeafProfile};
use crate::state::{self, NodeState, Role, ports};
use crate::tls;
use crate::token::{InviteToken, JoinBundle, JoinReply, JoinRequest, MAX_MESSAGE_BYTES};

/// Time a joiner has to complete the TLS handshake and send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The state one invite endpoint checks requests against.
pub struct Invite {
    secret_sha256: String,
    expires_at: SystemTime,
    uses: u32,
    used: Mutex<u32>,
    authority: Authority,
    node: NodeState,
    consul_gossip_key: String,
}

impl Invite {
    /// Creates an invite that allows `uses` joins until `expires_at`; returns it with its
    /// secret (base64url).
    pub fn new(
        authority: Authority,
        node: NodeState,
        consul_gossip_key: String,
        uses: u32,
        expires_at: SystemTime,
    ) -> Result<(Self, String), pki::PkiError> {
        let secret = URL_SAFE_NO_PAD.encode(pki::random_bytes::<32>()?);
        let invite = Self {
            secret_sha256: pki::sha256_hex(secret.as_bytes()),
            expires_at,
            uses,
            used: Mutex::new(0),
            authority,
            node,
            consul_gossip_key,
        };
        Ok((invite, secret))
    }

    /// Checks a request and, when it is valid, signs the joiner's certificate and
    /// consumes one use.
    pub fn handle(&self, request: &JoinRequest, now: SystemTime) -> JoinReply {
        match self.accept(request, now) {
            Ok(bundle) => JoinReply::Accepted(Box::new(bundle)),
            Err(reason) => JoinReply::Rejected { reason },
        }
    }

    fn accept(&self, request: &JoinRequest, now: SystemTime) -> Result<JoinBundle, String> {
        if now >= self.expires_at {
            return Err(format!(
                "the invite expired at {}",
                format_time(self.expires_at)
            ));
        }
        // Comparing digests keeps the comparison time independent of the secret's bytes.
        if pki::sha256_hex(request.secret.as_bytes()) != self.secret_sha256 {
            return Err("wrong secret: the token does not belong to this invite".to_owned());
        }
        state::validate_name("node name", &request.node_name)?;
        if !request.dns_name.is_empty() && !valid_dns_name(&request.dns_name) {
            return Err(format!("invalid DNS name {:?}", request.dns_name));
        }

        let mut used = self.used.lock().expect("invite use counter lock");
        if *used >= self.uses {
            return Err(format!(
                "the invite was already used ({} of {} uses)",
                *used, self.uses
            ));
        }

        let region = &self.node.region;
        let client_name = format!("client.{region}.nomad");
        let consul_client = format!("client.{}.consul", self.node.datacenter);
        let profile = LeafProfile::for_node(
            &client_name,
            &[&client_name, &consul_client],
            request.tailscale_ip,
            &request.dns_name,
        )
        .server()
        .client();
        let cert_pem = self
            .authority
            .sign_request(&request.csr_pem, &profile)
            .map_err(|error| {
                format!(
                    "invalid certificate signing request: {}",
                    error_chain(&error)
                )
            })?;

        *used += 1;
        Ok(JoinBundle {
            ca_pem: self.authority.cert_pem().to_owned(),
            cert_pem,
            consul_gossip_key: self.consul_gossip_key.clone(),
            region: self.node.region.clone(),
            datacenter: self.node.datacenter.clone(),
            server_ip: self.node.server_ip,
        })
    }

    fn uses_left(&self) -> u32 {
        self.uses - *self.used.lock().expect("invite use counter lock")
    }
}

fn valid_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Formats a time as RFC 3339 UTC with second precision.
pub fn format_time(time: SystemTime) -> String {
    let seconds = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let time = time::OffsetDateTime::from_unix_timestamp(seconds as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        time.year(),
        u8::from(time.month()),
        time.day(),
        time.hour(),
        time.minute(),
        time.second()
    )
}

/// Runs `styx invite`.
pub async fn run(args: &InviteArgs, layout: &Layout) -> anyhow::Result<()> {
    let node = NodeState::load(layout)?;
    if node.role != Role::Server {
        anyhow::bail!("styx invite runs on the server node; this node is a client");
    }
    let read = |path: std::path::PathBuf| {
        std::fs::read_to_string(&path)
            .map_err(|error| anyhow::anyhow!("failed to read {}: {error}", path.display()))
    };
    let authority = Authority::load(&read(layout.cert("ca"))?, &read(layout.key("ca"))?)?;
    let consul_key = read(layout.consul_gossip_key())?.trim().to_owned();

    let listen = args
        .listen
        .unwrap_or_else(|| SocketAddr::new(node.tailscale_ip, ports::INVITE));
    if listen.ip().is_unspecified() {
        anyhow::bail!(
            "invalid --listen {listen}: expected a specific address, such as this node's Tailscale address"
        );
    }

    let endpoint_profile =
        LeafProfile::for_node("styx-invite", &[], listen.ip(), &node.tailscale_dns_name).server();
    let endpoint = authority.issue(&endpoint_profile)?;
    let chain = format!("{}{}", endpoint.cert_pem, authority.cert_pem());
    let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(&chain, &endpoint.key_pem)?));

    let listener = TcpListener::bind(listen)
        .await
        .map_err(|error| anyhow::anyhow!("failed to listen on {listen}: {error}"))?;
    let address = listener.local_addr()?;

    let expires_at = SystemTime::now() + args.ttl;
    let fingerprint = authority.fingerprint();
    let (invite, secret) = Invite::new(authority, node, consul_key, args.uses, expires_at)?;
    let token = InviteToken {
        address,
        ca_sha256: fingerprint,
        secret,
        expires_at: expires_at.duration_since(UNIX_EPOCH)?.as_secs(),
    };

    say(&format!(
        "invite endpoint listening on {address} until {} ({} use(s))",
        format_time(expires_at),
        args.uses
    ));
    say("run this on each Mac that should join:\n");
    say(&format!("  styx join {}\n", token.encode()));

    let end = serve(listener, acceptor, Arc::new(invite), args.ttl).await;
    say(&format!("invite endpoint closed: {end}"));
    Ok(())
}

/// Prints one line to stdout, ignoring a closed stdout: the endpoint keeps serving when
/// the terminal or pipe that started it goes away.
fn say(line: &str) {
    use std::io::Write;

    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// Reason the invite endpoint stopped serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServeEnd {
    UsesSpent,
    Expired,
    Interrupted,
}

impl std::fmt::Display for ServeEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::UsesSpent => "every use is spent",
            Self::Expired => "the invite expired",
            Self::Interrupted => "interrupted",
        })
    }
}

/// Accepts joiners until every use is spent, the TTL ends or Ctrl-C, then waits for the
/// connections already accepted. Each of those ends within `REQUEST_TIMEOUT`.
async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    invite: Arc<Invite>,
    ttl: Duration,
) -> ServeEnd {
    let deadline = tokio::time::sleep(ttl);
    tokio::pin!(deadline);
    let mut connections = tokio::task::JoinSet::new();

    let end = loop {
        let (stream, peer) = tokio::select! {
            () = &mut deadline => break ServeEnd::Expired,
            _ = tokio::signal::ctrl_c() => break ServeEnd::Interrupted,
            Some(_) = connections.join_next(), if !connections.is_empty() => {
                if invite.uses_left() == 0 {
                    break ServeEnd::UsesSpent;
                }
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::debug!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };

        let acceptor = acceptor.clone();
        let invite = invite.clone();
        connections.spawn(async move {
            let result =
                tokio::time::timeout(REQUEST_TIMEOUT, serve_one(stream, acceptor, &invite)).await;
            match result {
                Ok(Ok(line)) => say(&format!("{peer}: {line}")),
                Ok(Err(error)) => tracing::debug!(%peer, %error, "invite connection failed"),
                Err(_) => tracing::debug!(%peer, "invite connection timed out"),
            }
        });
    };

    // Stop accepting first, so that a joiner arriving now is refused at once instead of
    // waiting in the backlog. The connection that spent the last use may still be
    // sending its reply, so wait for every accepted one.
    drop(listener);
    while connections.join_next().await.is_some() {}
    end
}

async fn serve_one(
    stream: tokio::net::TcpStream,
    acceptor: TlsAcceptor,
    invite: &Invite,
) -> std::io::Result<String> {
    let tls = acceptor.accept(stream).await?;
    let mut reader = BufReader::new(tls);

    let mut line = Vec::new();
    (&mut reader)
        .take(MAX_MESSAGE_BYTES as u64)
        .read_until(b'\n', &mut line)
        .await?;
    let reply = match serde_json::from_slice::<JoinRequest>(&line) {
        Ok(request) => invite.handle(&request, SystemTime::now()),
        Err(_) => JoinReply::Rejected {
            reason: "invalid join request".to_owned(),
        },
    };
    let summary = match &reply {
        JoinReply::Accepted(_) => format!("joined; {} use(s) left", invite.uses_left()),
        JoinReply::Rejected { reason } => format!("rejected: {reason}"),
    };

    let mut bytes = serde_json::to_vec(&reply).expect("a reply always serializes");
    bytes.push(b'\n');
    let mut tls = reader.into_inner();
    tls.write_all(&bytes).await?;
    tls.shutdown().await?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(secret: &str) -> JoinRequest {
        let (csr_pem, _key) = pki::create_request("joiner").unwrap();
        JoinRequest {
            secret: secret.to_owned(),
            node_name: "mac-two".into(),
            tailscale_ip: "100.64.0.2".parse().unwrap(),
            dns_name: "mac-two.tail1234.ts.net".into(),
            csr_pem,
        }
    }

    fn invite(uses: u32, ttl: Duration) -> (Invite, String) {
        let authority = Authority::generate("global").unwrap();
        Invite::new(
            authority,
            NodeState::example_server(),
            "key".into(),
            uses,
            SystemTime::now() + ttl,
        )
        .unwrap()
    }

    fn rejection(reply: JoinReply) -> String {
        match reply {
            JoinReply::Rejected { reason } => reason,
            JoinReply::Accepted(_) => panic!("request was accepted"),
        }
    }

    #[test]
    fn expired_invite_rejects_valid_secret() {
        let (invite, secret) = invite(1, Duration::from_secs(60));

        let later = SystemTime::now() + Duration::from_secs(120);
        let reason = rejection(invite.handle(&request(&secret), later));

        assert!(reason.contains("expired"), "{reason}");
        assert_eq!(
            invite.uses_left(),
            1,
            "a rejected request must not consume a use"
        );
    }

    #[test]
    fn single_use_invite_rejects_second_join() {
        let (invite, secret) = invite(1, Duration::from_secs(60));

        let first = invite.handle(&request(&secret), SystemTime::now());
        let second = invite.handle(&request(&secret), SystemTime::now());

        assert!(matches!(first, JoinReply::Accepted(_)));
        let reason = rejection(second);
        assert!(reason.contains("already used (1 of 1 uses)"), "{reason}");
    }

    #[test]
    fn wrong_secret_is_rejected() {
        let (invite, _secret) = invite(1, Duration::from_secs(60));
        let wrong = URL_SAFE_NO_PAD.encode([0u8; 32]);

        let reason = rejection(invite.handle(&request(&wrong), SystemTime::now()));

        assert!(reason.contains("wrong secret"), "{reason}");
    }
}

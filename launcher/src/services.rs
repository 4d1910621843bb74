//! Starting a node's services in order and waiting, with a bound, until each is healthy;
//! initialising and unsealing Vault on the server.
//!
//! Order: Consul first (Nomad registers in it), then Vault, then Nomad. Each wait polls
//! the service's HTTP API over TLS once a second until it responds or the bound passes.

use std::time::Duration;

use serde_json::json;

use crate::files;
use crate::http::{HttpError, HttpsClient};
use crate::launchd::{self, LaunchdError};
use crate::layout::Layout;
use crate::state::{Endpoints, NodeState, Role, ports};
use crate::tls::{self, TlsError};

/// Timeout of one health request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Failure to start the services, with what did start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("failed to read the TLS material in {}", dir.display())]
    ReadTls {
        dir: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("failed to start {service}")]
    Launchd {
        service: String,
        #[source]
        source: LaunchdError,
    },
    #[error("{service} did not become healthy within {} s: {last_error}", timeout.as_secs())]
    Unhealthy {
        service: String,
        timeout: Duration,
        last_error: String,
    },
    #[error("failed to initialise Vault")]
    VaultInit(#[source] HttpError),
    #[error(transparent)]
    File(#[from] files::FileError),
}

/// TLS clients of this node's Nomad, Consul and Vault APIs, authenticated with the node's
/// CLI certificate.
pub struct ApiClients {
    pub nomad: HttpsClient,
    pub consul: HttpsClient,
    pub vault: HttpsClient,
}

impl ApiClients {
    pub fn new(state: &NodeState, layout: &Layout, timeout: Duration) -> Result<Self, StartError> {
        let read = |path: std::path::PathBuf| {
            std::fs::read_to_string(&path).map_err(|source| StartError::ReadTls {
                dir: path.parent().map(ToOwned::to_owned).unwrap_or_default(),
                source,
            })
        };
        let ca = read(layout.cert("ca"))?;
        let identity = state.cert_name("cli");
        let cert = read(layout.cert(identity))?;
        let key = read(layout.key(identity))?;
        let config = tls::client_config(&ca, Some((&cert, &key)))?;

        let endpoints = Endpoints::load(layout);
        let vault_default = match state.role {
            Role::Server => format!("https://127.0.0.1:{}", ports::VAULT_API),
            Role::Client => state.vault_url(),
        };
        Ok(Self {
            nomad: HttpsClient::new(
                &endpoints.nomad.unwrap_or_else(|| state.nomad_url()),
                config.clone(),
                timeout,
            )?,
            consul: HttpsClient::new(
                &endpoints.consul.unwrap_or_else(|| state.consul_url()),
                config.clone(),
                timeout,
            )?,
            vault: HttpsClient::new(&endpoints.vault.unwrap_or(vault_default), config, timeout)?,
        })
    }
}

/// Loads each service's agent in order and waits for it; on the server, initialises and
/// unseals Vault when it has never been initialised.
///
/// Progress lines go to stdout. On error, the services before the failing one are
/// running and the ones after it were not started.
pub async fn start_all(
    state: &NodeState,
    layout: &Layout,
    health_timeout: Duration,
) -> Result<(), StartError> {
    let clients = ApiClients::new(state, layout, REQUEST_TIMEOUT)?;

    for service in state.services() {
        let label = launchd::label(service);
        launchd::bootout(&label)
            .await
            .map_err(|source| StartError::Launchd {
                service: (*service).to_owned(),
                source,
            })?;
        launchd::bootstrap(&layout.plist(&label))
            .await
            .map_err(|source| StartError::Launchd {
                service: (*service).to_owned(),
                source,
            })?;
        println!("started {service}, waiting until it is healthy");

        match *service {
            "consul" => {
                wait_until(service, health_timeout, || consul_healthy(&clients.consul)).await?
            }
            "vault" => {
                wait_until(service, health_timeout, || vault_answers(&clients.vault)).await?;
                initialise_vault(&clients.vault, layout).await?;
            }
            _ => {
                wait_until(service, health_timeout, || {
                    nomad_healthy(&clients.nomad, state)
                })
                .await?
            }
        }
        println!("{service} is healthy");
    }
    Ok(())
}

async fn wait_until<F, Fut>(
    service: &str,
    timeout: Duration,
    mut probe: F,
) -> Result<(), StartError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last_error = match probe().await {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(StartError::Unhealthy {
                service: service.to_owned(),
                timeout,
                last_error,
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn consul_healthy(client: &HttpsClient) -> Result<(), String> {
    let leader: String = client
        .get_json("/v1/status/leader")
        .await
        .map_err(|e| e.to_string())?;
    if leader.is_empty() {
        return Err("Consul has no leader yet".to_owned());
    }
    Ok(())
}

async fn vault_answers(client: &HttpsClient) -> Result<(), String> {
    // /v1/sys/health returns 501 before initialisation and 503 while sealed, so any
    // response means the listener is up.
    client
        .request("GET", "/v1/sys/health", None)
        .await
        .map(|_| ())
        .map_err(|error| error.to_string())
}

async fn nomad_healthy(client: &HttpsClient, state: &NodeState) -> Result<(), String> {
    if state.role == Role::Server {
        let leader: String = client
            .get_json("/v1/status/leader")
            .await
            .map_err(|e| e.to_string())?;
        if leader.is_empty() {
            return Err("Nomad has no leader yet".to_owned());
        }
    }
    node_registered(client, &state.node_name).await
}

/// Succeeds once the Nomad node named `node_name` is registered and `ready`.
pub async fn node_registered(client: &HttpsClient, node_name: &str) -> Result<(), String> {
    let nodes: Vec<serde_json::Value> = client
        .get_json("/v1/nodes")
        .await
        .map_err(|e| e.to_string())?;
    let status = nodes
        .iter()
        .find(|node| node["Name"] == node_name)
        .map(|node| node["Status"].as_str().unwrap_or("unknown").to_owned());
    match status.as_deref() {
        Some("ready") => Ok(()),
        Some(other) => Err(format!("node {node_name} is {other}")),
        None => Err(format!("node {node_name} is not registered yet")),
    }
}

/// Initialises Vault with one unseal key, stores the result 0600, and unseals it.
///
/// Skipped when Vault reports that it is already initialised.
// NOTE: after a reboot Vault starts sealed and nothing unseals it automatically; the
// key is in secrets/vault-init.json for `vault operator unseal`.
async fn initialise_vault(client: &HttpsClient, layout: &Layout) -> Result<(), StartError> {
    let status: serde_json::Value = client
        .get_json("/v1/sys/init")
        .await
        .map_err(StartError::VaultInit)?;
    if status["initialized"] == true {
        println!("vault is already initialised");
        return Ok(());
    }

    let init: serde_json::Value = client
        .send_json(
            "PUT",
            "/v1/sys/init",
            &json!({"secret_shares": 1, "secret_threshold": 1}),
        )
        .await
        .map_err(StartError::VaultInit)?;
    let pretty = serde_json::to_vec_pretty(&init).expect("a JSON value always serializes");
    files::write_atomic(&layout.vault_init(), &pretty, files::MODE_SECRET)?;
    println!(
        "vault initialised; unseal key and root token saved to {}",
        layout.vault_init().display()
    );

    let key = init["keys_base64"][0]
        .as_str()
        .or_else(|| init["keys"][0].as_str())
        .unwrap_or_default();
    let _: serde_json::Value = client
        .send_json("PUT", "/v1/sys/unseal", &json!({"key": key}))
        .await
        .map_err(StartError::VaultInit)?;
    println!("vault unsealed");
    Ok(())
}

//! `styx status`: this node's launchd agents, then the cluster as the Nomad and Consul
//! HTTP APIs report it over TLS, with one line for each thing that is down.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::driver_options::DRIVER_NAME;
use crate::error_chain;
use crate::http::HttpsClient;
use crate::launchd;
use crate::layout::Layout;
use crate::services::ApiClients;
use crate::state::{NodeState, Role};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    /// Name of the checked item, such as `agent consul` or `nomad leader`.
    pub name: String,
    pub up: bool,
    pub detail: String,
}

impl Item {
    fn up(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            up: true,
            detail: detail.into(),
        }
    }

    fn down(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            up: false,
            detail: detail.into(),
        }
    }
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    pub node: String,
    pub role: Role,
    pub items: Vec<Item>,
}

/// Runs `styx status`; returns whether everything is up.
pub async fn run(json: bool, layout: &Layout) -> anyhow::Result<bool> {
    let state = NodeState::load(layout)?;
    let report = collect(&state, layout).await?;

    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "node {} ({:?}), data in {}",
            report.node,
            report.role,
            layout.root.display()
        );
        for item in &report.items {
            let mark = if item.up { "UP  " } else { "DOWN" };
            println!("{mark} {:<28} {}", item.name, item.detail);
        }
    }
    Ok(report.items.iter().all(|item| item.up))
}

async fn collect(state: &NodeState, layout: &Layout) -> anyhow::Result<Report> {
    let mut items = Vec::new();
    for service in state.services() {
        items.push(agent_item(service).await);
    }

    let clients = ApiClients::new(state, layout, REQUEST_TIMEOUT)?;
    items.extend(nomad_items(&clients.nomad).await);
    items.extend(consul_items(&clients.consul).await);
    if state.role == Role::Server {
        items.push(vault_item(&clients.vault).await);
    }

    Ok(Report {
        node: state.node_name.clone(),
        role: state.role,
        items,
    })
}

async fn agent_item(service: &str) -> Item {
    let name = format!("agent {service}");
    match launchd::print(&launchd::label(service)).await {
        Ok(agent) if agent.loaded && agent.state == "running" => {
            let pid = agent
                .pid
                .map(|pid| format!(", pid {pid}"))
                .unwrap_or_default();
            Item::up(name, format!("running{pid}"))
        }
        Ok(agent) => Item::down(name, format!("{}: run `styx start`", agent.state)),
        Err(error) => Item::down(name, error_chain(&error)),
    }
}

async fn nomad_items(client: &HttpsClient) -> Vec<Item> {
    let mut items = Vec::new();
    match client.get_json::<String>("/v1/status/leader").await {
        Ok(leader) if !leader.is_empty() => items.push(Item::up("nomad leader", leader)),
        Ok(_) => items.push(Item::down("nomad leader", "no leader elected")),
        Err(error) => {
            items.push(Item::down("nomad api", error_chain(&error)));
            return items;
        }
    }

    match client.get_json::<Value>("/v1/agent/members").await {
        Ok(members) => {
            for member in members["Members"].as_array().into_iter().flatten() {
                let name = member["Name"].as_str().unwrap_or("?");
                let status = member["Status"].as_str().unwrap_or("unknown");
                let item_name = format!("nomad server {name}");
                if status == "alive" {
                    items.push(Item::up(item_name, status));
                } else {
                    items.push(Item::down(item_name, status));
                }
            }
        }
        Err(error) => items.push(Item::down("nomad members", error_chain(&error))),
    }

    match client.get_json::<Vec<Value>>("/v1/nodes").await {
        Ok(nodes) => items.extend(nodes.iter().map(node_item)),
        Err(error) => items.push(Item::down("nomad nodes", error_chain(&error))),
    }
    items
}

fn node_item(node: &Value) -> Item {
    let name = format!("nomad node {}", node["Name"].as_str().unwrap_or("?"));
    let status = node["Status"].as_str().unwrap_or("unknown");
    let driver = &node["Drivers"][DRIVER_NAME];
    if status != "ready" {
        return Item::down(name, format!("status {status}"));
    }
    if driver.is_null() {
        return Item::down(
            name,
            format!("ready, but driver {DRIVER_NAME} is not detected"),
        );
    }
    if driver["Healthy"] != true {
        let description = driver["HealthDescription"]
            .as_str()
            .unwrap_or("no description");
        return Item::down(
            name,
            format!("ready, driver {DRIVER_NAME} unhealthy: {description}"),
        );
    }
    Item::up(name, format!("ready, driver {DRIVER_NAME} healthy"))
}

async fn consul_items(client: &HttpsClient) -> Vec<Item> {
    let mut items = Vec::new();
    match client.get_json::<String>("/v1/status/leader").await {
        Ok(leader) if !leader.is_empty() => items.push(Item::up("consul leader", leader)),
        Ok(_) => items.push(Item::down("consul leader", "no leader elected")),
        Err(error) => {
            items.push(Item::down("consul api", error_chain(&error)));
            return items;
        }
    }

    match client.get_json::<Vec<Value>>("/v1/agent/members").await {
        Ok(members) => {
            for member in &members {
                let name = format!("consul member {}", member["Name"].as_str().unwrap_or("?"));
                // Serf member status codes: 1 alive, 2 leaving, 3 left, 4 failed.
                let status = match member["Status"].as_i64() {
                    Some(1) => "alive",
                    Some(2) => "leaving",
                    Some(3) => "left",
                    Some(4) => "failed",
                    _ => "unknown",
                };
                if status == "alive" {
                    items.push(Item::up(name, status));
                } else {
                    items.push(Item::down(name, status));
                }
            }
        }
        Err(error) => items.push(Item::down("consul members", error_chain(&error))),
    }
    items
}

async fn vault_item(client: &HttpsClient) -> Item {
    // /v1/sys/health encodes the state in the status code as well as the body.
    match client.request("GET", "/v1/sys/health", None).await {
        Ok(response) => {
            let body: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
            if body["initialized"] == false {
                Item::down("vault", "not initialised: run `styx start`")
            } else if body["sealed"] == true {
                Item::down(
                    "vault",
                    "sealed: run `vault operator unseal` with the key in secrets/vault-init.json",
                )
            } else {
                let version = body["version"].as_str().unwrap_or("unknown version");
                Item::up("vault", format!("unsealed, {version}"))
            }
        }
        Err(error) => Item::down("vault", error_chain(&error)),
    }
}

//! `styx init`: make this Mac the cluster's server.
//!
//! Every check that can fail (flags, an existing setup, Tailscale, the service binaries)
//! runs before anything is written. Then the CA, certificates, gossip keys, configs and
//! state file are staged and committed in one step (see `install`), and the services are
//! started unless `--no-start` was given.

use std::path::Path;

use crate::cli::InitArgs;
use crate::configs::GossipKeys;
use crate::files;
use crate::install::{self, Staging};
use crate::layout::Layout;
use crate::pki::{self, Authority, LeafProfile};
use crate::setup::{self, SetupError};
use crate::state::{self, NodeState, Role};
use crate::tailscale;

/// Runs `styx init`.
pub async fn run(args: &InitArgs, layout: &Layout) -> anyhow::Result<()> {
    state::validate_name("region", &args.region).map_err(anyhow::Error::msg)?;
    state::validate_name("datacenter", &args.datacenter).map_err(anyhow::Error::msg)?;
    if let Some(name) = &args.node_name {
        state::validate_name("node name", name).map_err(anyhow::Error::msg)?;
    }
    install::check_existing(layout, args.setup.force)?;

    let node = tailscale::detect().await?;
    if let Some((id, _)) = &node.exit_node {
        println!(
            "warning: Tailscale exit node {id} is in use; it can take the route to the container subnet (see `styx doctor`)"
        );
    }
    let binaries = setup::find_binaries(Role::Server)?;

    let state = NodeState {
        role: Role::Server,
        node_name: args
            .node_name
            .clone()
            .unwrap_or_else(|| state::node_name_from_host(&node.host_name)),
        region: args.region.clone(),
        datacenter: args.datacenter.clone(),
        tailscale_ip: node.ipv4,
        tailscale_dns_name: node.dns_name.clone(),
        server_ip: node.ipv4,
        container_path: setup::container_path(),
        binaries,
        styx_version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let keys = GossipKeys {
        consul: pki::gossip_key()?,
        nomad: Some(pki::gossip_key()?),
    };

    let staging = Staging::create(layout)?;
    if let Err(error) = stage_server(&staging, &state, layout, &keys) {
        staging.discard();
        return Err(error.into());
    }
    setup::commit_and_start(staging, &state, layout, &args.setup).await?;

    print_next_steps(&state, layout, args.setup.no_start);
    Ok(())
}

fn stage_server(
    staging: &Staging,
    state: &NodeState,
    layout: &Layout,
    keys: &GossipKeys,
) -> Result<(), SetupError> {
    let authority = Authority::generate(&state.region)?;
    staging.write(
        &layout.cert("ca"),
        authority.cert_pem().as_bytes(),
        files::MODE_PUBLIC,
    )?;
    staging.write(
        &layout.key("ca"),
        authority.key_pem().as_bytes(),
        files::MODE_SECRET,
    )?;

    for (name, profile) in server_profiles(state) {
        let issued = authority.issue(&profile)?;
        staging.write(
            &layout.cert(name),
            issued.cert_pem.as_bytes(),
            files::MODE_PUBLIC,
        )?;
        staging.write(
            &layout.key(name),
            issued.key_pem.as_bytes(),
            files::MODE_SECRET,
        )?;
    }

    staging.write(
        &layout.consul_gossip_key(),
        keys.consul.as_bytes(),
        files::MODE_SECRET,
    )?;
    if let Some(nomad) = &keys.nomad {
        staging.write(
            &layout.nomad_gossip_key(),
            nomad.as_bytes(),
            files::MODE_SECRET,
        )?;
    }
    setup::stage_node(staging, state, layout, keys)?;
    Ok(())
}

/// Certificate profiles of the server node, by file name.
pub fn server_profiles(state: &NodeState) -> Vec<(&'static str, LeafProfile)> {
    let ip = state.tailscale_ip;
    let dns = state.tailscale_dns_name.as_str();
    let nomad_server = format!("server.{}.nomad", state.region);
    let nomad_client = format!("client.{}.nomad", state.region);
    let consul_server = format!("server.{}.consul", state.datacenter);
    let cli = format!("cli.{}.nomad", state.region);

    vec![
        // The server node's Nomad agent is both server and client, so it carries both names.
        (
            "nomad",
            LeafProfile::for_node(&nomad_server, &[&nomad_server, &nomad_client], ip, dns)
                .server()
                .client(),
        ),
        (
            "consul",
            LeafProfile::for_node(&consul_server, &[&consul_server], ip, dns)
                .server()
                .client(),
        ),
        (
            "vault",
            LeafProfile::for_node("vault", &["vault.service.consul"], ip, dns).server(),
        ),
        (
            "cli",
            LeafProfile::for_node(&cli, &[&cli], ip, dns).client(),
        ),
    ]
}

/// Says where Vault's unseal key and root token are. The file exists only once
/// `styx start` (or `init` without `--no-start`) has initialised Vault.
fn vault_init_note(vault_init: &Path) -> String {
    if vault_init.exists() {
        format!(
            "Vault's unseal key and root token: {}",
            vault_init.display()
        )
    } else {
        format!(
            "Vault is not initialised yet: `styx start` initialises it and saves its unseal key and root token to {}",
            vault_init.display()
        )
    }
}

fn print_next_steps(state: &NodeState, layout: &Layout, no_start: bool) {
    println!();
    println!("Next steps:");
    if no_start {
        println!("  styx start                      # start Consul, Vault and Nomad");
    }
    println!(
        "  styx invite --ttl 15m --uses 2  # on this Mac, then run the printed `styx join` on the others"
    );
    println!("  styx status                     # services and cluster members");
    println!("  styx doctor                     # prerequisites and macOS hazards");
    println!();
    println!("{}", vault_init_note(&layout.vault_init()));
    println!(
        "Nomad CLI: export NOMAD_ADDR={} NOMAD_CACERT={} NOMAD_CLIENT_CERT={} NOMAD_CLIENT_KEY={}",
        state.nomad_url(),
        layout.cert("ca").display(),
        layout.cert("cli").display(),
        layout.key("cli").display()
    );
}

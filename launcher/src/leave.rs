//! `styx leave` and `styx uninstall`: stop and unload the agents and remove their
//! plists; the data root stays unless `--purge` is given.
//!
//! `leave` first drains the Nomad node and makes the Consul agent leave gracefully, so
//! running jobs move elsewhere and the other members see a clean departure.
//! `uninstall` skips those steps, for a node whose services are already broken.

use std::ffi::OsString;

use crate::error_chain;
use crate::launchd::{self, Bootout};
use crate::layout::Layout;
use crate::process::Invocation;
use crate::state::{Endpoints, NodeState};

/// Runs `styx leave` (when `graceful`) or `styx uninstall`.
pub async fn run(layout: &Layout, graceful: bool, purge: bool) -> anyhow::Result<()> {
    let state = NodeState::load(layout)?;

    if graceful {
        leave_cluster(&state, layout).await;
    }

    let mut failed = Vec::new();
    for service in state.services().iter().rev() {
        let (line, ok) = remove_agent(layout, service).await;
        println!("{line}");
        if !ok {
            failed.push(*service);
        }
    }
    if !failed.is_empty() {
        anyhow::bail!(
            "failed to stop or remove the {} agent(s), as the lines above say; the data at {} \
             was kept. After fixing the cause, run `styx uninstall` to finish",
            failed.join(", "),
            layout.root.display()
        );
    }

    if purge {
        std::fs::remove_dir_all(&layout.root).map_err(|error| {
            anyhow::anyhow!("failed to delete {}: {error}", layout.root.display())
        })?;
        println!("deleted {}", layout.root.display());
    } else {
        println!(
            "data kept at {} (pass --purge to delete it)",
            layout.root.display()
        );
    }
    Ok(())
}

/// Stops and unloads the agent of `service` and removes its plist. Returns a line that
/// describes both outcomes, and whether both succeeded.
///
/// The plist is removed even when stopping fails, so launchd does not load the agent
/// again at the next login.
async fn remove_agent(layout: &Layout, service: &str) -> (String, bool) {
    let label = launchd::label(service);
    let (stop, stopped) = match launchd::bootout(&label).await {
        Ok(Bootout::Stopped) => ("stopped".to_owned(), true),
        Ok(Bootout::NotLoaded) => ("not loaded".to_owned(), true),
        Err(error) => (format!("failed to stop ({})", error_chain(&error)), false),
    };

    let plist = layout.plist(&label);
    let (removal, removed) = match std::fs::remove_file(&plist) {
        Ok(()) => (format!("removed {}", plist.display()), true),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            (format!("no plist at {}", plist.display()), true)
        }
        Err(error) => (
            format!("failed to remove {} ({error})", plist.display()),
            false,
        ),
    };
    (format!("{service}: {stop}, {removal}"), stopped && removed)
}

/// Drains the Nomad node and makes Consul leave. Failures are reported and do not stop
/// the removal, since a node that cannot reach its services must still be removable.
async fn leave_cluster(state: &NodeState, layout: &Layout) {
    let identity = state.cert_name("cli");
    let endpoints = Endpoints::load(layout);
    let nomad_addr = endpoints.nomad.unwrap_or_else(|| state.nomad_url());
    let consul_addr = endpoints.consul.unwrap_or_else(|| state.consul_url());
    let tls_env = |prefix: &str| -> Vec<(String, OsString)> {
        vec![
            (
                format!("{prefix}_CACERT"),
                layout.cert("ca").into_os_string(),
            ),
            (
                format!("{prefix}_CLIENT_CERT"),
                layout.cert(identity).into_os_string(),
            ),
            (
                format!("{prefix}_CLIENT_KEY"),
                layout.key(identity).into_os_string(),
            ),
        ]
    };

    let mut drain = Invocation::new("nomad")
        .args([
            "node",
            "drain",
            "-self",
            "-enable",
            "-yes",
            "-deadline",
            "5m",
        ])
        .env("NOMAD_ADDR", &nomad_addr)
        .timeout(std::time::Duration::from_secs(330));
    for (key, value) in tls_env("NOMAD") {
        drain = drain.env(&key, value);
    }
    report("drain the Nomad node", drain).await;

    let mut consul_leave = Invocation::new("consul")
        .arg("leave")
        .env("CONSUL_HTTP_ADDR", &consul_addr)
        .env("CONSUL_HTTP_SSL", "true");
    for (key, value) in tls_env("CONSUL") {
        consul_leave = consul_leave.env(&key, value);
    }
    report("make Consul leave", consul_leave).await;
}

async fn report(step: &str, invocation: Invocation) {
    match invocation.run().await {
        Ok(output) if output.success() => println!("{step}: done"),
        Ok(output) => println!(
            "warning: failed to {step} (`{}` exited {:?}: {}); continuing",
            invocation.display_argv(),
            output.code,
            output.first_message_line()
        ),
        Err(error) => println!("warning: failed to {step} ({error}); continuing"),
    }
}

/// Runs `styx start`: loads the agents of an existing setup and waits for them.
pub async fn start(layout: &Layout, health_timeout: std::time::Duration) -> anyhow::Result<()> {
    let state = NodeState::load(layout)?;
    crate::services::start_all(&state, layout, health_timeout).await?;
    println!("all services are healthy");
    Ok(())
}

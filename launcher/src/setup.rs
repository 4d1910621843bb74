//! Steps `init` and `join` share: finding the service binaries, staging the configs and
//! the state file, committing, and starting.

use std::path::PathBuf;

use crate::cli::SetupFlags;
use crate::configs::{self, GossipKeys};
use crate::driver_options;
use crate::files::{self, FileError};
use crate::install::{InstallError, Staging};
use crate::layout::Layout;
use crate::process::find_program;
use crate::services::{self, StartError};
use crate::state::{Binaries, NodeState, Role};

/// Failure to set up a node.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{program} not found on PATH: install it with `brew install {formula}`")]
    MissingBinary {
        program: &'static str,
        formula: &'static str,
    },
    #[error(transparent)]
    Install(#[from] InstallError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    #[error(
        "the setup is in place at {} but starting failed: {source}; after fixing the cause, \
         run `styx start`, or `styx uninstall` to remove the agents",
        root.display()
    )]
    Start {
        root: PathBuf,
        #[source]
        source: StartError,
    },
}

/// Finds the binaries the agents of `role` run.
pub fn find_binaries(role: Role) -> Result<Binaries, SetupError> {
    let find = |program: &'static str, formula: &'static str| {
        find_program(program).ok_or(SetupError::MissingBinary { program, formula })
    };
    let nomad = find("nomad", "hashicorp/tap/nomad")?;
    let consul = find("consul", "hashicorp/tap/consul")?;
    let vault = match role {
        Role::Server => Some(find("vault", "hashicorp/tap/vault")?),
        Role::Client => None,
    };
    Ok(Binaries {
        nomad,
        consul,
        vault,
    })
}

/// Path of Apple's `container` CLI: the one on `PATH`, else where its installer puts it.
pub fn container_path() -> PathBuf {
    find_program("container")
        .unwrap_or_else(|| PathBuf::from(driver_options::DEFAULT_CONTAINER_PATH))
}

/// Path of the `styx-driver` binary: next to this executable, else on `PATH`.
pub fn driver_binary() -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.parent()
                .map(|dir| dir.join(driver_options::DRIVER_BINARY))
        })
        .filter(|path| path.is_file());
    beside.or_else(|| find_program(driver_options::DRIVER_BINARY))
}

/// Writes the configs, data and log directories, the driver link and the state file.
pub fn stage_node(
    staging: &Staging,
    state: &NodeState,
    layout: &Layout,
    keys: &GossipKeys,
) -> Result<(), FileError> {
    for service in state.services() {
        staging.create_dir(&layout.service_data(service))?;
    }
    staging.create_dir(&layout.logs_dir())?;
    staging.create_dir(&layout.plugins_dir())?;

    // Configs embed the gossip key, so they are as private as the key.
    staging.write(
        &layout.service_config("nomad"),
        configs::nomad(state, layout, keys).as_bytes(),
        files::MODE_SECRET,
    )?;
    staging.write(
        &layout.service_config("consul"),
        configs::consul(state, layout, keys).as_bytes(),
        files::MODE_SECRET,
    )?;
    if state.role == Role::Server {
        staging.write(
            &layout.service_config("vault"),
            configs::vault(state, layout).as_bytes(),
            files::MODE_SECRET,
        )?;
    }

    if let Some(driver) = driver_binary() {
        let link = layout.plugins_dir().join(driver_options::PLUGIN_FILE);
        staging.symlink(&driver, &link)?;
    }

    staging.write(
        &layout.state_file(),
        state.to_toml().as_bytes(),
        files::MODE_SECRET,
    )
}

/// Commits the staged setup and, unless `no_start`, starts its services.
pub async fn commit_and_start(
    staging: Staging,
    state: &NodeState,
    layout: &Layout,
    flags: &SetupFlags,
) -> Result<(), SetupError> {
    let no_start = flags.no_start;
    if !no_start {
        // The old agents still run from the files about to be moved aside.
        for service in ["nomad", "vault", "consul"] {
            let _ = crate::launchd::bootout(&crate::launchd::label(service)).await;
        }
    }

    if let Some(backup) = staging.commit(state)? {
        println!("previous setup moved to {}", backup.display());
    }
    println!(
        "wrote the {} setup to {}",
        role_name(state.role),
        layout.root.display()
    );
    if driver_binary().is_none() {
        println!(
            "note: {} was not found next to styx or on PATH; put it in {} before running jobs",
            driver_options::DRIVER_BINARY,
            layout.plugins_dir().display()
        );
    }

    if no_start {
        println!("--no-start: nothing was started; run `styx start` to start the services");
        return Ok(());
    }
    services::start_all(state, layout, flags.health_timeout)
        .await
        .map_err(|source| SetupError::Start {
            root: layout.root.clone(),
            source,
        })
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Server => "server",
        Role::Client => "client",
    }
}

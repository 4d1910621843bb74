//! launchd agents for Nomad, Consul and Vault: plist generation and the `launchctl`
//! calls that load, unload and inspect them.
//!
//! Services run as agents in the logged-in user's GUI domain (`gui/<uid>`), because
//! Apple's `container` service lives in that user's launchd session and the Nomad
//! client must reach it.
//! NOTE: a Mac reached only over SSH without a GUI login has no `gui/<uid>` domain. There
//! bootstrapping fails, and the user must log in at the console once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plist::{Dictionary, Value};

use crate::layout::Layout;
use crate::process::{Invocation, Output, ProcessError};
use crate::state::NodeState;

/// Prefix of every Styx agent label.
pub const LABEL_PREFIX: &str = "dev.styx";

/// Open-file limit set for every agent, soft and hard.
///
/// launchd starts agents with a soft limit of 256, far too low for Nomad and the
/// driver's proxies. 10240 is macOS's `OPEN_MAX`: `setrlimit` rejects a higher soft
/// limit for the file count, so launchd could not apply it.
pub const NUMBER_OF_FILES: i64 = 10_240;

/// `PATH` the agents run with: Homebrew on Apple silicon and Intel, then the system.
pub const AGENT_PATH: &str = "/opt/homebrew/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";

/// Label of the agent that runs `service`.
pub fn label(service: &str) -> String {
    format!("{LABEL_PREFIX}.{service}")
}

/// Returns the launchd domain of the current user's GUI session.
pub fn gui_domain() -> String {
    format!("gui/{}", rustix::process::getuid().as_raw())
}

/// Argv of the agent that runs `service` from its config file.
pub fn program_arguments(state: &NodeState, layout: &Layout, service: &str) -> Vec<String> {
    let config = layout
        .service_config(service)
        .to_string_lossy()
        .into_owned();
    let binary = |path: &Path| path.to_string_lossy().into_owned();
    match service {
        "consul" => vec![
            binary(&state.binaries.consul),
            "agent".into(),
            "-config-file".into(),
            config,
        ],
        "vault" => {
            let vault = state
                .binaries
                .vault
                .clone()
                .unwrap_or_else(|| PathBuf::from("vault"));
            vec![binary(&vault), "server".into(), "-config".into(), config]
        }
        _ => vec![
            binary(&state.binaries.nomad),
            "agent".into(),
            "-config".into(),
            config,
        ],
    }
}

/// Renders the plist of the agent that runs `service` as XML.
pub fn plist(state: &NodeState, layout: &Layout, service: &str) -> Vec<u8> {
    let log = layout.logs_dir().join(format!("{service}.log"));
    let log = Value::String(log.to_string_lossy().into_owned());

    let mut limits = Dictionary::new();
    limits.insert(
        "NumberOfFiles".into(),
        Value::Integer(NUMBER_OF_FILES.into()),
    );

    let mut environment = Dictionary::new();
    environment.insert("PATH".into(), Value::String(agent_path(state)));

    let arguments = program_arguments(state, layout, service)
        .into_iter()
        .map(Value::String)
        .collect();

    let entries: BTreeMap<&str, Value> = BTreeMap::from([
        ("Label", Value::String(label(service))),
        ("ProgramArguments", Value::Array(arguments)),
        ("RunAtLoad", Value::Boolean(true)),
        ("KeepAlive", Value::Boolean(true)),
        // Seconds launchd waits before restarting an agent that exited.
        ("ThrottleInterval", Value::Integer(10.into())),
        (
            "WorkingDirectory",
            Value::String(layout.service_dir(service).to_string_lossy().into_owned()),
        ),
        ("StandardOutPath", log.clone()),
        ("StandardErrorPath", log),
        ("EnvironmentVariables", Value::Dictionary(environment)),
        ("SoftResourceLimits", Value::Dictionary(limits.clone())),
        ("HardResourceLimits", Value::Dictionary(limits)),
        // Files the services create (raft data, logs) are private to the user: 0o077.
        ("Umask", Value::Integer(0o077.into())),
    ]);

    let mut dictionary = Dictionary::new();
    for (key, value) in entries {
        dictionary.insert(key.to_owned(), value);
    }

    let mut xml = Vec::new();
    plist::to_writer_xml(&mut xml, &Value::Dictionary(dictionary))
        .expect("writing a plist to memory cannot fail");
    xml
}

fn agent_path(state: &NodeState) -> String {
    // The driver runs `container` by the configured path, but Nomad's fingerprinting and
    // task helpers also look it up on PATH.
    match state.container_path.parent() {
        Some(dir) if !AGENT_PATH.split(':').any(|entry| Path::new(entry) == dir) => {
            format!("{}:{AGENT_PATH}", dir.display())
        }
        _ => AGENT_PATH.to_owned(),
    }
}

/// Failure of a `launchctl` call that must succeed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchdError {
    #[error("launchctl not found on PATH: it is a macOS tool, so run styx on macOS")]
    NotFound,
    #[error("failed to run launchctl")]
    Run(#[source] ProcessError),
    #[error("`{argv}` failed (exit {code:?}): {message}")]
    Failed {
        argv: String,
        code: Option<i32>,
        message: String,
    },
}

impl From<ProcessError> for LaunchdError {
    fn from(error: ProcessError) -> Self {
        match error {
            ProcessError::NotFound { .. } => Self::NotFound,
            other => Self::Run(other),
        }
    }
}

/// Loads and starts the agent whose plist is at `plist_path`.
pub async fn bootstrap(plist_path: &Path) -> Result<(), LaunchdError> {
    let invocation = Invocation::new("launchctl")
        .arg("bootstrap")
        .arg(gui_domain())
        .arg(plist_path);
    check(&invocation, invocation.run().await?)
}

/// Outcome of [`bootout`] for one agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bootout {
    /// The agent was loaded and is now stopped and unloaded.
    Stopped,
    /// The agent was not loaded (`launchctl print` failed, as it does with exit 113
    /// for an unknown service), so nothing was done.
    NotLoaded,
}

/// Stops and unloads the agent with `label`. An agent that is not loaded is not an error.
pub async fn bootout(label: &str) -> Result<Bootout, LaunchdError> {
    if !is_loaded(label).await? {
        return Ok(Bootout::NotLoaded);
    }
    let invocation = Invocation::new("launchctl")
        .arg("bootout")
        .arg(format!("{}/{label}", gui_domain()));
    check(&invocation, invocation.run().await?)?;
    Ok(Bootout::Stopped)
}

/// State of a loaded agent, from `launchctl print`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentState {
    pub loaded: bool,
    /// Value of the `state = ...` line, such as `running` or `not running`.
    pub state: String,
    pub pid: Option<u32>,
}

/// Reads the state of the agent with `label`; an unknown label is reported as not loaded.
pub async fn print(label: &str) -> Result<AgentState, LaunchdError> {
    let output = Invocation::new("launchctl")
        .arg("print")
        .arg(format!("{}/{label}", gui_domain()))
        .run()
        .await?;
    if !output.success() {
        return Ok(AgentState {
            loaded: false,
            state: "not loaded".to_owned(),
            pid: None,
        });
    }

    let field = |name: &str| {
        output.stdout.lines().find_map(|line| {
            let (key, value) = line.trim().split_once(" = ")?;
            (key == name).then(|| value.trim().to_owned())
        })
    };
    Ok(AgentState {
        loaded: true,
        state: field("state").unwrap_or_else(|| "unknown".to_owned()),
        pid: field("pid").and_then(|pid| pid.parse().ok()),
    })
}

async fn is_loaded(label: &str) -> Result<bool, LaunchdError> {
    Ok(print(label).await?.loaded)
}

fn check(invocation: &Invocation, output: Output) -> Result<(), LaunchdError> {
    if output.success() {
        return Ok(());
    }
    Err(LaunchdError::Failed {
        argv: invocation.display_argv(),
        code: output.code,
        message: output.first_message_line().to_owned(),
    })
}

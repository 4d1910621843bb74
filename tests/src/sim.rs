//! Handle on one `container-sim` state directory, for tests that call the simulator
//! directly or check what it left behind.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use styx_driver::proto::base::{
    ClientTopology, ClientTopologyCore, ConfigSchemaRequest, NomadConfig, NomadDriverConfig,
    SetConfigRequest,
};

use crate::cty::{Value, encode_with_spec};
use crate::nomad::{LaunchOptions, Plugin};

/// The simulator binary and its state directory.
#[derive(Debug, Clone)]
pub struct Simulator {
    binary: PathBuf,
    state: PathBuf,
}

impl Simulator {
    /// Uses `state` as the simulator's state directory.
    pub fn new(binary: &Path, state: &Path) -> Self {
        Self {
            binary: binary.to_owned(),
            state: state.to_owned(),
        }
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    pub fn state(&self) -> &Path {
        &self.state
    }

    /// Environment the plugin needs so that its CLI calls reach this simulator: the
    /// state directory and a 100 ms stats delay in place of the real CLI's 2 s.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "CONTAINER_SIM_STATE".to_owned(),
                self.state.display().to_string(),
            ),
            ("CONTAINER_SIM_STATS_DELAY_MS".to_owned(), "100".to_owned()),
        ]
    }

    /// Runs one CLI command and returns its output.
    pub fn run<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Command::new(&self.binary)
            .args(args)
            .envs(self.env())
            .output()
            .expect("container-sim runs")
    }

    /// Makes every container command fail as with a stopped `container` service.
    pub fn set_system_running(&self, running: bool) {
        let marker = self.state.join("system-stopped");
        if running {
            let _ = std::fs::remove_file(marker);
        } else {
            std::fs::create_dir_all(&self.state).unwrap();
            std::fs::write(marker, b"").unwrap();
        }
    }

    /// Returns true when a container with `id` exists.
    pub fn exists(&self, id: &str) -> bool {
        self.state
            .join("containers")
            .join(id)
            .join("config.json")
            .exists()
    }

    /// PIDs of live processes (not zombies) that belong to this simulator: its CLI
    /// calls, monitors and image processes.
    pub fn live_processes(&self) -> Vec<u32> {
        let marker = self.state.display().to_string();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let zombie = stat
                    .rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
                !zombie && String::from_utf8_lossy(&environ).contains(&marker)
            })
            .collect()
    }
}

/// Launches the plugin with the simulator's environment and configures it as a Nomad
/// agent would: container path, loopback bind address, and the node's CPU topology.
pub async fn launch_plugin(
    binary: &Path,
    dir: &Path,
    sim: &Simulator,
    extra_env: &[(String, String)],
    recover_stopped: bool,
) -> Plugin {
    let plugin = launch_unconfigured(binary, dir, sim, extra_env).await;
    let body = Value::object(plugin_options(sim, recover_stopped));
    set_plugin_config(&plugin, &body)
        .await
        .expect("config accepted");
    plugin
}

/// Launches the plugin with the simulator's environment, without SetConfig, for tests
/// that send their own config with [`set_plugin_config`].
pub async fn launch_unconfigured(
    binary: &Path,
    dir: &Path,
    sim: &Simulator,
    extra_env: &[(String, String)],
) -> Plugin {
    let mut env = sim.env();
    env.extend(extra_env.iter().cloned());
    let options = LaunchOptions {
        socket_dir: Some(dir.to_owned()),
        env,
        ..LaunchOptions::default()
    };
    Plugin::start(binary, &options)
        .await
        .expect("plugin starts")
}

/// Plugin options that make the plugin use `sim`: container path, loopback bind
/// address and a 20 s command timeout. Tests add options to the list.
pub fn plugin_options(sim: &Simulator, recover_stopped: bool) -> Vec<(&'static str, Value)> {
    vec![
        (
            "container_path",
            Value::string(sim.binary().to_str().expect("UTF-8 path")),
        ),
        ("bind_address", Value::string("127.0.0.1")),
        ("command_timeout", Value::string("20s")),
        ("recover_stopped", Value::Bool(recover_stopped)),
    ]
}

/// Sends SetConfig with `body` as the agent sends it to the plugin that runs tasks,
/// with the node's ports and a 4-core CPU topology.
pub async fn set_plugin_config(plugin: &Plugin, body: &Value) -> Result<(), tonic::Status> {
    let schema = plugin
        .base()
        .config_schema(ConfigSchemaRequest {})
        .await?
        .into_inner()
        .spec
        .expect("the plugin has a config schema");
    let core = ClientTopologyCore {
        base_speed: 2000,
        ..ClientTopologyCore::default()
    };
    let request = SetConfigRequest {
        msgpack_config: encode_with_spec(&schema, body).expect("config matches the schema"),
        nomad_config: Some(NomadConfig {
            driver: Some(NomadDriverConfig {
                client_min_port: 14000,
                client_max_port: 14512,
                topology: Some(ClientTopology {
                    cores: vec![core; 4],
                    ..ClientTopology::default()
                }),
            }),
        }),
        plugin_api_version: "v0.1.0".to_owned(),
    };
    plugin.base().set_config(request).await.map(drop)
}

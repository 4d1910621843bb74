//! The parts of a task's container: its name, vCPUs, memory, environment, mounts and
//! published ports, computed from Nomad's TaskConfig and the task's `config {}` block.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::TaskError;
use crate::config::{MountKind, TaskConfig as TaskOptions};
use crate::container::{CreateSpec, MountArg};
use crate::node::NodeCompute;
use crate::proto::drivers::TaskConfig;

/// Maximum length of a container ID that the CLI accepts.
const MAX_NAME_LEN: usize = 63;

/// Smallest `--memory` the CLI accepts, in MiB.
pub const MIN_MEMORY_MIB: u64 = 200;

/// Per-core speed assumed when Nomad has not sent the node's CPU topology.
const FALLBACK_CORE_MHZ: u64 = 1000;

/// Label keys the driver sets on every container.
pub const LABEL_ALLOC_ID: &str = "com.hashicorp.nomad.alloc_id";
pub const LABEL_TASK_NAME: &str = "com.hashicorp.nomad.task_name";
pub const LABEL_JOB_NAME: &str = "com.hashicorp.nomad.job_name";

/// One published port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortBinding {
    /// Port label from the group `network` block, or the container port as text.
    pub label: String,
    pub host_port: u16,
    pub container_port: u16,
}

/// Returns the container name of a task: `<task>-<alloc id>`, cut to the CLI's 63
/// characters. It depends only on the alloc and the task, so it is the same for every
/// start attempt and after recovery. Characters the CLI rejects become `-`.
pub fn container_name(alloc_id: &str, task_name: &str) -> String {
    let clean = |text: &str| -> String {
        text.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    };
    let alloc = clean(alloc_id);
    let task = clean(task_name);
    let task = task.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
    let task = if task.is_empty() { "task" } else { task };

    let room = MAX_NAME_LEN.saturating_sub(alloc.len() + 1).max(1);
    let task: String = task.chars().take(room).collect();
    let mut name = format!("{task}-{alloc}");
    name.truncate(MAX_NAME_LEN);
    name
}

/// Returns the vCPU count: the task's `cpus` option, else its `cpu` MHz divided by the
/// speed of one core, rounded up, at least 1.
pub fn vcpus(options: &TaskOptions, cpu_mhz: i64, compute: Option<NodeCompute>) -> u32 {
    if let Some(cpus) = options.cpus {
        return cpus;
    }
    let core_mhz = compute
        .filter(|compute| compute.cores > 0 && compute.total_mhz > 0)
        .map_or(FALLBACK_CORE_MHZ, |compute| {
            compute.total_mhz / compute.cores as u64
        })
        .max(1);
    let mhz = u64::try_from(cpu_mhz).unwrap_or(0);
    u32::try_from(mhz.div_ceil(core_mhz).max(1)).unwrap_or(u32::MAX)
}

/// Returns the memory limit in MiB: the larger of `memory` and `memory_max`.
pub fn memory_mib(config: &TaskConfig) -> Result<u64, TaskError> {
    let memory = config
        .resources
        .as_ref()
        .and_then(|resources| resources.allocated_resources.as_ref())
        .and_then(|allocated| allocated.memory.as_ref())
        .map_or(0, |memory| memory.memory_mb.max(memory.memory_max_mb));
    let memory = u64::try_from(memory).unwrap_or(0);
    if memory < MIN_MEMORY_MIB {
        return Err(TaskError::InvalidTask(format!(
            "memory of {memory} MB is below the {MIN_MEMORY_MIB} MB that Apple containers need; raise resources.memory"
        )));
    }
    Ok(memory)
}

pub fn cpu_mhz(config: &TaskConfig) -> i64 {
    config
        .resources
        .as_ref()
        .and_then(|resources| resources.allocated_resources.as_ref())
        .and_then(|allocated| allocated.cpu.as_ref())
        .map_or(0, |cpu| cpu.cpu_shares)
}

/// Resolves the task's `ports` option against the group network's ports. A label found
/// there publishes on its allocated host port and targets its `to` port (or the host
/// port when `to` is unset). A number that is not a label publishes that container port
/// on the container port plus `offset`.
pub fn port_bindings(
    options: &TaskOptions,
    config: &TaskConfig,
    offset: u16,
) -> Result<Vec<PortBinding>, TaskError> {
    let allocated = config
        .resources
        .as_ref()
        .map(|resources| resources.ports.as_slice())
        .unwrap_or_default();

    let mut bindings = Vec::with_capacity(options.ports.len());
    for label in &options.ports {
        if let Some(port) = allocated.iter().find(|port| &port.label == label) {
            let host_port = to_port(port.value, label)?;
            let container_port = if port.to > 0 {
                to_port(port.to, label)?
            } else {
                host_port
            };
            bindings.push(PortBinding {
                label: label.clone(),
                host_port,
                container_port,
            });
            continue;
        }

        let Ok(container_port) = label.parse::<u16>() else {
            return Err(TaskError::InvalidTask(format!(
                "port {label:?} is not a port label of the group network block; add it there or give a container port number"
            )));
        };
        let host_port = container_port.checked_add(offset).ok_or_else(|| {
            TaskError::InvalidTask(format!(
                "container port {container_port} plus the port offset {offset} exceeds 65535"
            ))
        })?;
        bindings.push(PortBinding {
            label: label.clone(),
            host_port,
            container_port,
        });
    }
    Ok(bindings)
}

fn to_port(value: i32, label: &str) -> Result<u16, TaskError> {
    u16::try_from(value)
        .ok()
        .filter(|port| *port > 0)
        .ok_or_else(|| TaskError::InvalidTask(format!("port {label:?} has invalid number {value}")))
}

/// Returns the task's mounts. Nomad's task directories are mounted as `/alloc`, `/local`
/// and `/secrets` because the driver reports image file system isolation.
pub fn task_mounts(config: &TaskConfig, options: &TaskOptions) -> Vec<MountArg> {
    let alloc_dir = Path::new(&config.alloc_dir);
    let task_dir = alloc_dir.join(&config.name);
    let mut mounts = vec![
        bind(alloc_dir.join("alloc"), "/alloc", false),
        bind(task_dir.join("local"), "/local", false),
        bind(task_dir.join("secrets"), "/secrets", false),
    ];

    for volume in &options.volumes {
        let source = Path::new(&volume.source);
        let source = if source.is_absolute() {
            source.to_path_buf()
        } else {
            task_dir.join(source)
        };
        mounts.push(bind(source, &volume.target, volume.readonly));
    }
    for mount in &options.mounts {
        let target = mount.target.clone();
        mounts.push(match (mount.kind, &mount.source) {
            (MountKind::Tmpfs, _) | (_, None) => MountArg::Tmpfs { target },
            (MountKind::Bind, Some(source)) => bind(task_dir.join(source), &target, mount.readonly),
            (MountKind::Volume, Some(name)) => MountArg::Volume {
                name: name.clone(),
                target,
                readonly: mount.readonly,
            },
        });
    }
    for mount in &config.mounts {
        mounts.push(bind(
            PathBuf::from(&mount.host_path),
            &mount.task_path,
            mount.readonly,
        ));
    }
    mounts
}

fn bind(source: PathBuf, target: &str, readonly: bool) -> MountArg {
    MountArg::Bind {
        source,
        target: target.to_owned(),
        readonly,
    }
}

/// Splits the environment into env-file lines and the few variables an env file cannot
/// carry (values with a newline), which go on the command line.
pub fn split_env(env: &BTreeMap<String, String>) -> (String, Vec<(String, String)>) {
    let mut file = String::new();
    let mut inline = Vec::new();
    for (key, value) in env {
        if value.contains('\n') || value.contains('\r') {
            inline.push((key.clone(), value.clone()));
        } else {
            file.push_str(key);
            file.push('=');
            file.push_str(value);
            file.push('\n');
        }
    }
    (file, inline)
}

/// Builds the `container create` spec, without the env file path, which the caller
/// sets once the file is written.
pub fn create_spec(
    name: &str,
    config: &TaskConfig,
    options: &TaskOptions,
    cpus: u32,
    memory_mib: u64,
) -> CreateSpec {
    let mut labels: Vec<(String, String)> = vec![
        (LABEL_ALLOC_ID.into(), config.alloc_id.clone()),
        (LABEL_TASK_NAME.into(), config.name.clone()),
        (LABEL_JOB_NAME.into(), config.job_name.clone()),
    ];
    labels.extend(
        options
            .labels
            .iter()
            .map(|(key, value)| (key.clone(), value.clone())),
    );

    let mut command: Vec<String> = options.command.iter().cloned().collect();
    command.extend(options.args.iter().cloned());

    CreateSpec {
        name: name.to_owned(),
        image: options.image.clone(),
        cpus,
        memory_mib,
        env_file: None,
        env: Vec::new(),
        labels,
        mounts: task_mounts(config, options),
        entrypoint: options.entrypoint.clone(),
        workdir: options.workdir.clone(),
        user: options
            .user
            .clone()
            .or_else(|| (!config.user.is_empty()).then(|| config.user.clone())),
        init: options.init,
        platform: options
            .platform
            .as_ref()
            .map(|platform| match &platform.variant {
                Some(variant) => format!("{}/{}/{variant}", platform.os, platform.arch),
                None => format!("{}/{}", platform.os, platform.arch),
            }),
        dns_servers: options
            .dns_servers
            .iter()
            .map(ToString::to_string)
            .collect(),
        dns_search_domains: options.dns_search_domains.clone(),
        dns_options: options.dns_options.clone(),
        command,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::drivers::{
        AllocatedMemoryResources, AllocatedTaskResources, PortMapping, Resources,
    };

    fn options(ports: &[&str]) -> TaskOptions {
        TaskOptions {
            image: "styx/echo".into(),
            entrypoint: None,
            command: None,
            args: Vec::new(),
            ports: ports.iter().map(|port| (*port).to_owned()).collect(),
            cpus: None,
            volumes: Vec::new(),
            mounts: Vec::new(),
            labels: BTreeMap::new(),
            dns_servers: Vec::new(),
            dns_search_domains: Vec::new(),
            dns_options: Vec::new(),
            workdir: None,
            user: None,
            init: false,
            platform: None,
        }
    }

    fn task_with_ports(ports: Vec<PortMapping>, memory_mb: i64) -> TaskConfig {
        TaskConfig {
            resources: Some(Resources {
                allocated_resources: Some(AllocatedTaskResources {
                    memory: Some(AllocatedMemoryResources {
                        memory_mb,
                        memory_max_mb: 0,
                    }),
                    ..AllocatedTaskResources::default()
                }),
                ports,
                ..Resources::default()
            }),
            ..TaskConfig::default()
        }
    }

    #[test]
    fn name_is_stable_and_valid() {
        let alloc = "7f3c2a1b-9d4e-4c1a-8b2f-0a1b2c3d4e5f";
        assert_eq!(container_name(alloc, "web"), format!("web-{alloc}"));
        assert_eq!(container_name(alloc, "web"), container_name(alloc, "web"));

        let long = container_name(alloc, &"x".repeat(80));
        assert_eq!(long.len(), 63);
        assert!(long.ends_with(alloc));

        let odd = container_name(alloc, "_my task/1");
        assert_eq!(odd, format!("my-task-1-{alloc}"));
    }

    #[test]
    fn vcpus_round_up_from_mhz() {
        let compute = Some(NodeCompute {
            total_mhz: 8000,
            cores: 4,
        });
        assert_eq!(vcpus(&options(&[]), 2500, compute), 2);
        assert_eq!(vcpus(&options(&[]), 100, compute), 1);
        assert_eq!(vcpus(&options(&[]), 0, None), 1);
        let mut fixed = options(&[]);
        fixed.cpus = Some(3);
        assert_eq!(vcpus(&fixed, 100, compute), 3);
    }

    #[test]
    fn memory_below_minimum_rejected() {
        assert_eq!(memory_mib(&task_with_ports(Vec::new(), 300)).unwrap(), 300);
        let error = memory_mib(&task_with_ports(Vec::new(), 128)).unwrap_err();
        assert!(error.to_string().contains("128 MB"), "{error}");
    }

    #[test]
    fn ports_from_group_network_and_offset() {
        let config = task_with_ports(
            vec![
                PortMapping {
                    label: "http".into(),
                    value: 23456,
                    to: 8080,
                    host_ip: "100.64.0.5".into(),
                },
                PortMapping {
                    label: "admin".into(),
                    value: 9000,
                    to: 0,
                    host_ip: String::new(),
                },
            ],
            300,
        );
        let bindings = port_bindings(&options(&["http", "admin", "53"]), &config, 10_000).unwrap();

        assert_eq!(
            bindings[0],
            PortBinding {
                label: "http".into(),
                host_port: 23456,
                container_port: 8080
            }
        );
        assert_eq!(
            bindings[1],
            PortBinding {
                label: "admin".into(),
                host_port: 9000,
                container_port: 9000
            }
        );
        assert_eq!(
            bindings[2],
            PortBinding {
                label: "53".into(),
                host_port: 10053,
                container_port: 53
            }
        );
    }

    #[test]
    fn unknown_port_label_rejected() {
        let error = port_bindings(
            &options(&["grpc"]),
            &task_with_ports(Vec::new(), 300),
            10_000,
        )
        .unwrap_err();
        assert!(error.to_string().contains("\"grpc\""), "{error}");
    }

    #[test]
    fn env_with_newline_goes_inline() {
        let env = BTreeMap::from([
            ("A".to_owned(), "1".to_owned()),
            ("CERT".to_owned(), "line1\nline2".to_owned()),
        ]);
        let (file, inline) = split_env(&env);

        assert_eq!(file, "A=1\n");
        assert_eq!(inline, [("CERT".to_owned(), "line1\nline2".to_owned())]);
    }
}

//! A task's `config {}` block for `driver = "apple-container"`.
//!
//! Environment, CPU and memory are not here: Nomad delivers them in the task's `env`
//! and `resources`. `cpus` only overrides the vCPU count derived from the resources.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use super::decode::{DecodeError, ObjectReader};
use super::schema::{block_list, object, optional, required, with_default};
use crate::proto::hclspec::Spec;

/// Validated task config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskConfig {
    /// OCI image reference, such as `docker.io/library/nginx:alpine`.
    pub image: String,
    /// Replaces the image's entrypoint.
    pub entrypoint: Option<String>,
    /// First word of the container's command. Together with `args` it replaces the
    /// image's command.
    pub command: Option<String>,
    pub args: Vec<String>,
    /// Labels of the group `network` block's ports that this task publishes.
    pub ports: Vec<String>,
    /// Number of vCPUs, overriding the count derived from the task's `cpu` resource.
    pub cpus: Option<u32>,
    pub volumes: Vec<VolumeBind>,
    pub mounts: Vec<MountSpec>,
    /// Container labels. Values may not contain `=`, which the `container` CLI rejects.
    pub labels: BTreeMap<String, String>,
    pub dns_servers: Vec<IpAddr>,
    pub dns_search_domains: Vec<String>,
    pub dns_options: Vec<String>,
    /// Working directory inside the container.
    pub workdir: Option<String>,
    /// `name`, `uid` or `uid:gid` inside the container.
    pub user: Option<String>,
    /// Whether to run a minimal init process as PID 1 that reaps zombies.
    pub init: bool,
    pub platform: Option<Platform>,
}

/// A `volumes` entry, `"<host path>:<container path>[:ro|:rw]"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeBind {
    /// Host path; a relative path is relative to the task directory.
    pub source: String,
    /// Absolute path inside the container.
    pub target: String,
    pub readonly: bool,
}

/// A `mount {}` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub kind: MountKind,
    /// Host path for a bind mount, volume name for a volume; unused for tmpfs.
    pub source: Option<String>,
    /// Absolute path inside the container.
    pub target: String,
    pub readonly: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    Bind,
    Volume,
    Tmpfs,
}

/// An OCI platform, `os/arch[/variant]`, such as `linux/arm64`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl TaskConfig {
    /// Returns the hclspec that Nomad checks and encodes a task's `config {}` block with.
    pub fn schema() -> Spec {
        let mount = object([
            ("type", with_default("type", "string", "\"bind\"")),
            ("source", optional("string")),
            ("target", required("string")),
            ("readonly", with_default("readonly", "bool", "false")),
        ]);

        object([
            ("image", required("string")),
            ("entrypoint", optional("string")),
            ("command", optional("string")),
            ("args", optional("list(string)")),
            ("ports", optional("list(string)")),
            ("cpus", optional("number")),
            ("volumes", optional("list(string)")),
            ("mount", block_list(mount)),
            ("labels", optional("map(string)")),
            ("dns_servers", optional("list(string)")),
            ("dns_search_domains", optional("list(string)")),
            ("dns_options", optional("list(string)")),
            ("workdir", optional("string")),
            ("user", optional("string")),
            ("init", with_default("init", "bool", "false")),
            ("platform", optional("string")),
        ])
    }

    /// Decodes and validates `TaskConfig.msgpack_driver_config`. The error names the
    /// attribute at fault.
    pub fn from_msgpack(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut reader = ObjectReader::from_msgpack(bytes)?;

        let image = reader
            .take_string("image")?
            .ok_or_else(|| DecodeError::Missing {
                path: reader.path("image"),
            })?;
        validate_image(&reader.path("image"), &image)?;

        let config = Self {
            image,
            entrypoint: reader.take_string("entrypoint")?,
            command: reader.take_string("command")?,
            args: reader.take_string_list("args")?,
            ports: read_ports(&mut reader)?,
            cpus: read_cpus(&mut reader)?,
            volumes: read_volumes(&mut reader)?,
            mounts: read_mounts(&mut reader)?,
            labels: read_labels(&mut reader)?,
            dns_servers: read_dns_servers(&mut reader)?,
            dns_search_domains: reader.take_string_list("dns_search_domains")?,
            dns_options: reader.take_string_list("dns_options")?,
            workdir: read_absolute(&mut reader, "workdir")?,
            user: reader.take_string("user")?,
            init: reader.take_bool("init")?.unwrap_or(false),
            platform: read_platform(&mut reader)?,
        };

        reader.finish()?;
        Ok(config)
    }
}

fn validate_image(path: &str, image: &str) -> Result<(), DecodeError> {
    if image.is_empty() || image.chars().any(char::is_whitespace) {
        return Err(DecodeError::invalid(
            path,
            format!(
                "{image:?} is not an image reference; expected a name such as \"nginx:alpine\""
            ),
        ));
    }
    Ok(())
}

fn read_ports(reader: &mut ObjectReader) -> Result<Vec<String>, DecodeError> {
    let ports = reader.take_string_list("ports")?;
    let mut seen = HashSet::new();
    for (index, label) in ports.iter().enumerate() {
        let path = format!("{}[{index}]", reader.path("ports"));
        if label.is_empty() {
            return Err(DecodeError::invalid(path, "a port label must not be empty"));
        }
        if !seen.insert(label) {
            return Err(DecodeError::invalid(
                path,
                format!("port label {label:?} is listed twice"),
            ));
        }
    }
    Ok(ports)
}

fn read_cpus(reader: &mut ObjectReader) -> Result<Option<u32>, DecodeError> {
    let Some(cpus) = reader.take_u64("cpus")? else {
        return Ok(None);
    };
    match u32::try_from(cpus) {
        Ok(cpus) if cpus > 0 => Ok(Some(cpus)),
        _ => Err(DecodeError::invalid(
            reader.path("cpus"),
            format!("{cpus} is not a vCPU count; expected a whole number of at least 1"),
        )),
    }
}

fn read_volumes(reader: &mut ObjectReader) -> Result<Vec<VolumeBind>, DecodeError> {
    let entries = reader.take_string_list("volumes")?;
    let mut volumes = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let path = format!("{}[{index}]", reader.path("volumes"));
        volumes.push(parse_volume(&path, entry)?);
    }
    Ok(volumes)
}

fn parse_volume(path: &str, entry: &str) -> Result<VolumeBind, DecodeError> {
    let invalid = || {
        DecodeError::invalid(
            path,
            format!(
                "{entry:?} is not a volume; expected \"<host path>:<container path>\" with an optional \":ro\" or \":rw\""
            ),
        )
    };

    let parts: Vec<&str> = entry.split(':').collect();
    let (source, target, readonly) = match parts.as_slice() {
        [source, target] => (*source, *target, false),
        [source, target, "ro"] => (*source, *target, true),
        [source, target, "rw"] => (*source, *target, false),
        _ => return Err(invalid()),
    };
    if source.is_empty() || !target.starts_with('/') {
        return Err(invalid());
    }

    Ok(VolumeBind {
        source: source.to_owned(),
        target: target.to_owned(),
        readonly,
    })
}

fn read_mounts(reader: &mut ObjectReader) -> Result<Vec<MountSpec>, DecodeError> {
    let mut mounts = Vec::new();
    for mut block in reader.take_block_list("mount")? {
        let kind = match block.take_string("type")?.as_deref() {
            None | Some("bind") => MountKind::Bind,
            Some("volume") => MountKind::Volume,
            Some("tmpfs") => MountKind::Tmpfs,
            Some(other) => {
                return Err(DecodeError::invalid(
                    block.path("type"),
                    format!(
                        "{other:?} is not a mount type; expected \"bind\", \"volume\" or \"tmpfs\""
                    ),
                ));
            }
        };

        let source = block.take_string("source")?;
        if source.is_none() && kind != MountKind::Tmpfs {
            return Err(DecodeError::Missing {
                path: block.path("source"),
            });
        }
        let target = read_absolute(&mut block, "target")?.ok_or_else(|| DecodeError::Missing {
            path: block.path("target"),
        })?;
        let readonly = block.take_bool("readonly")?.unwrap_or(false);

        block.finish()?;
        mounts.push(MountSpec {
            kind,
            source,
            target,
            readonly,
        });
    }
    Ok(mounts)
}

fn read_labels(reader: &mut ObjectReader) -> Result<BTreeMap<String, String>, DecodeError> {
    let labels = reader.take_string_map("labels")?;
    for (key, value) in &labels {
        let path = format!("{}.{key}", reader.path("labels"));
        if key.is_empty() || key.contains('=') {
            return Err(DecodeError::invalid(
                path,
                "a label key must be non-empty and must not contain \"=\"",
            ));
        }
        if value.contains('=') {
            return Err(DecodeError::invalid(
                path,
                format!("label value {value:?} contains \"=\", which the container CLI rejects"),
            ));
        }
    }
    Ok(labels)
}

fn read_dns_servers(reader: &mut ObjectReader) -> Result<Vec<IpAddr>, DecodeError> {
    let entries = reader.take_string_list("dns_servers")?;
    let mut servers = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let address = entry.parse().map_err(|_| {
            DecodeError::invalid(
                format!("{}[{index}]", reader.path("dns_servers")),
                format!("{entry:?} is not an IP address"),
            )
        })?;
        servers.push(address);
    }
    Ok(servers)
}

/// Reads an optional path that must be absolute inside the container.
fn read_absolute(
    reader: &mut ObjectReader,
    name: &'static str,
) -> Result<Option<String>, DecodeError> {
    let Some(value) = reader.take_string(name)? else {
        return Ok(None);
    };
    if !value.starts_with('/') {
        return Err(DecodeError::invalid(
            reader.path(name),
            format!("{value:?} is not an absolute path inside the container"),
        ));
    }
    Ok(Some(value))
}

fn read_platform(reader: &mut ObjectReader) -> Result<Option<Platform>, DecodeError> {
    let Some(value) = reader.take_string("platform")? else {
        return Ok(None);
    };

    let parts: Vec<&str> = value.split('/').collect();
    let platform = match parts.as_slice() {
        [os, arch] if !os.is_empty() && !arch.is_empty() => Platform {
            os: (*os).to_owned(),
            arch: (*arch).to_owned(),
            variant: None,
        },
        [os, arch, variant] if !os.is_empty() && !arch.is_empty() && !variant.is_empty() => {
            Platform {
                os: (*os).to_owned(),
                arch: (*arch).to_owned(),
                variant: Some((*variant).to_owned()),
            }
        }
        _ => {
            return Err(DecodeError::invalid(
                reader.path("platform"),
                format!(
                    "{value:?} is not a platform; expected \"os/arch\" such as \"linux/arm64\""
                ),
            ));
        }
    };
    Ok(Some(platform))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::decode::encode_object as encode;
    use rmpv::Value;

    fn strings(items: &[&str]) -> Value {
        Value::Array(items.iter().map(|item| Value::from(*item)).collect())
    }

    #[test]
    fn full_config_decodes() {
        let mount = Value::Map(vec![
            (Value::from("type"), Value::from("tmpfs")),
            (Value::from("source"), Value::Nil),
            (Value::from("target"), Value::from("/run")),
            (Value::from("readonly"), Value::from(false)),
        ]);
        let bytes = encode(vec![
            ("image", Value::from("nginx:alpine")),
            ("args", strings(&["-g", "daemon off;"])),
            ("ports", strings(&["http"])),
            ("cpus", Value::from(2u64)),
            ("volumes", strings(&["data:/srv:ro"])),
            ("mount", Value::Array(vec![mount])),
            (
                "labels",
                Value::Map(vec![(Value::from("tier"), Value::from("web"))]),
            ),
            ("dns_servers", strings(&["100.100.100.100"])),
            ("workdir", Value::from("/srv")),
            ("init", Value::from(true)),
            ("platform", Value::from("linux/arm64")),
        ]);
        let config = TaskConfig::from_msgpack(&bytes).unwrap();

        assert_eq!(config.image, "nginx:alpine");
        assert_eq!(config.args, ["-g", "daemon off;"]);
        assert_eq!(config.ports, ["http"]);
        assert_eq!(config.cpus, Some(2));
        assert_eq!(
            config.volumes,
            [VolumeBind {
                source: "data".into(),
                target: "/srv".into(),
                readonly: true
            }]
        );
        assert_eq!(config.mounts[0].kind, MountKind::Tmpfs);
        assert_eq!(config.labels["tier"], "web");
        assert_eq!(
            config.dns_servers,
            ["100.100.100.100".parse::<IpAddr>().unwrap()]
        );
        assert!(config.init);
        assert_eq!(config.platform.unwrap().arch, "arm64");
    }

    #[test]
    fn missing_image_is_rejected() {
        let error = TaskConfig::from_msgpack(&encode(vec![("args", Value::Nil)]))
            .unwrap_err()
            .to_string();
        assert_eq!(error, "missing required attribute \"image\"");
    }

    #[test]
    fn invalid_values_name_attribute() {
        let cases = [
            ("ports", strings(&["http", "http"]), "ports[1]"),
            ("cpus", Value::from(0u64), "cpus"),
            ("volumes", strings(&["/a:relative"]), "volumes[0]"),
            (
                "labels",
                Value::Map(vec![(Value::from("k"), Value::from("a=b"))]),
                "labels.k",
            ),
            ("dns_servers", strings(&["resolver"]), "dns_servers[0]"),
            ("workdir", Value::from("srv"), "workdir"),
            ("platform", Value::from("arm64"), "platform"),
        ];
        for (name, value, path) in cases {
            let bytes = encode(vec![("image", Value::from("redis")), (name, value)]);
            let error = TaskConfig::from_msgpack(&bytes).unwrap_err().to_string();
            assert!(error.contains(&format!("\"{path}\"")), "{error}");
        }
    }

    #[test]
    fn mount_without_source_is_rejected() {
        let mount = Value::Map(vec![(Value::from("target"), Value::from("/data"))]);
        let bytes = encode(vec![
            ("image", Value::from("redis")),
            ("mount", Value::Array(vec![mount])),
        ]);

        let error = TaskConfig::from_msgpack(&bytes).unwrap_err().to_string();
        assert_eq!(error, "missing required attribute \"mount[0].source\"");
    }
}

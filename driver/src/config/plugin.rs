//! The agent-level plugin config: `plugin "apple-container" { config { ... } }`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::decode::{DecodeError, ObjectReader};
use super::duration::parse_duration;
use super::schema::{block, object, quoted, with_default};
use crate::proto::hclspec::Spec;

const DEFAULT_CONTAINER_PATH: &str = "/usr/local/bin/container";
const DEFAULT_PORT_OFFSET: u16 = 10_000;
const DEFAULT_BIND_ADDRESS: &str = "tailscale";
const DEFAULT_PRECONNECT_POOL_SIZE: u64 = 0;
const DEFAULT_STATS_INTERVAL: &str = "5s";
const DEFAULT_FINGERPRINT_INTERVAL: &str = "30s";
const DEFAULT_COMMAND_TIMEOUT: &str = "30s";
const DEFAULT_IMAGE_PULL_TIMEOUT: &str = "10m";
const DEFAULT_GC_CONTAINER: bool = true;
const DEFAULT_RECOVER_STOPPED: bool = false;

/// Largest pre-connect pool a listener may keep, to bound idle upstream sockets.
const MAX_PRECONNECT_POOL_SIZE: u64 = 64;

/// Validated plugin config. Every field has a default, so an absent `config {}` block
/// is valid.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    /// Absolute path of Apple's `container` CLI.
    pub container_path: PathBuf,
    /// Added to a container port to get the host port when the task's port has no
    /// static or dynamic host port of its own (80 becomes 10080).
    pub port_offset: u16,
    /// Address that published ports listen on.
    pub bind_address: BindAddress,
    /// Fresh upstream connections each published port keeps ready, 0 to disable.
    pub preconnect_pool_size: usize,
    /// Address of the Prometheus metrics endpoint, or `None` for no endpoint.
    pub metrics_address: Option<SocketAddr>,
    /// How often task statistics are sampled from `container stats`.
    pub stats_interval: Duration,
    /// How often the driver's health is probed while a fingerprint stream is open.
    pub fingerprint_interval: Duration,
    /// Time limit of one `container` CLI call other than an image pull.
    pub command_timeout: Duration,
    /// Time limit of one image pull.
    pub image_pull_timeout: Duration,
    /// Whether a destroyed task's container is deleted.
    pub gc_container: bool,
    /// Whether a task found stopped during recovery is started again instead of being
    /// reported as exited.
    pub recover_stopped: bool,
}

/// Listen address of published container ports on the Mac.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindAddress {
    /// The node's Tailscale IPv4 address, looked up when a port is published.
    Tailscale,
    Ip(IpAddr),
}

impl Default for PluginConfig {
    fn default() -> Self {
        let duration = |text| parse_duration(text).expect("default durations are valid");
        Self {
            container_path: PathBuf::from(DEFAULT_CONTAINER_PATH),
            port_offset: DEFAULT_PORT_OFFSET,
            bind_address: BindAddress::Tailscale,
            preconnect_pool_size: DEFAULT_PRECONNECT_POOL_SIZE as usize,
            metrics_address: None,
            stats_interval: duration(DEFAULT_STATS_INTERVAL),
            fingerprint_interval: duration(DEFAULT_FINGERPRINT_INTERVAL),
            command_timeout: duration(DEFAULT_COMMAND_TIMEOUT),
            image_pull_timeout: duration(DEFAULT_IMAGE_PULL_TIMEOUT),
            gc_container: DEFAULT_GC_CONTAINER,
            recover_stopped: DEFAULT_RECOVER_STOPPED,
        }
    }
}

impl PluginConfig {
    /// Returns the hclspec that Nomad checks and encodes the `config {}` block with.
    pub fn schema() -> Spec {
        let gc = object([(
            "container",
            with_default("container", "bool", &DEFAULT_GC_CONTAINER.to_string()),
        )]);

        object([
            (
                "container_path",
                with_default("container_path", "string", &quoted(DEFAULT_CONTAINER_PATH)),
            ),
            (
                "port_offset",
                with_default("port_offset", "number", &DEFAULT_PORT_OFFSET.to_string()),
            ),
            (
                "bind_address",
                with_default("bind_address", "string", &quoted(DEFAULT_BIND_ADDRESS)),
            ),
            (
                "preconnect_pool_size",
                with_default(
                    "preconnect_pool_size",
                    "number",
                    &DEFAULT_PRECONNECT_POOL_SIZE.to_string(),
                ),
            ),
            (
                "metrics_address",
                with_default("metrics_address", "string", "\"\""),
            ),
            (
                "stats_interval",
                with_default("stats_interval", "string", &quoted(DEFAULT_STATS_INTERVAL)),
            ),
            (
                "fingerprint_interval",
                with_default(
                    "fingerprint_interval",
                    "string",
                    &quoted(DEFAULT_FINGERPRINT_INTERVAL),
                ),
            ),
            (
                "command_timeout",
                with_default(
                    "command_timeout",
                    "string",
                    &quoted(DEFAULT_COMMAND_TIMEOUT),
                ),
            ),
            (
                "image_pull_timeout",
                with_default(
                    "image_pull_timeout",
                    "string",
                    &quoted(DEFAULT_IMAGE_PULL_TIMEOUT),
                ),
            ),
            ("gc", block(gc)),
            (
                "recover_stopped",
                with_default(
                    "recover_stopped",
                    "bool",
                    &DEFAULT_RECOVER_STOPPED.to_string(),
                ),
            ),
        ])
    }

    /// Decodes and validates the cty-msgpack bytes of `SetConfigRequest.msgpack_config`.
    /// Unset attributes keep their defaults. The error names the attribute at fault.
    pub fn from_msgpack(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut reader = ObjectReader::from_msgpack(bytes)?;
        let mut config = Self::default();

        if let Some(path) = reader.take_string("container_path")? {
            config.container_path = parse_container_path(&reader.path("container_path"), path)?;
        }
        if let Some(offset) = reader.take_u64("port_offset")? {
            config.port_offset = u16::try_from(offset).map_err(|_| {
                DecodeError::invalid(
                    reader.path("port_offset"),
                    format!("{offset} is not a port offset; expected 0 to 65535"),
                )
            })?;
        }
        if let Some(address) = reader.take_string("bind_address")? {
            config.bind_address = parse_bind_address(&reader.path("bind_address"), &address)?;
        }
        if let Some(size) = reader.take_u64("preconnect_pool_size")? {
            config.preconnect_pool_size =
                parse_pool_size(&reader.path("preconnect_pool_size"), size)?;
        }
        if let Some(address) = reader.take_string("metrics_address")? {
            config.metrics_address =
                parse_metrics_address(&reader.path("metrics_address"), &address)?;
        }

        read_interval(&mut reader, "stats_interval", &mut config.stats_interval)?;
        read_interval(
            &mut reader,
            "fingerprint_interval",
            &mut config.fingerprint_interval,
        )?;
        read_interval(&mut reader, "command_timeout", &mut config.command_timeout)?;
        read_interval(
            &mut reader,
            "image_pull_timeout",
            &mut config.image_pull_timeout,
        )?;

        if let Some(mut gc) = reader.take_block("gc")? {
            if let Some(flag) = gc.take_bool("container")? {
                config.gc_container = flag;
            }
            gc.finish()?;
        }
        if let Some(flag) = reader.take_bool("recover_stopped")? {
            config.recover_stopped = flag;
        }

        reader.finish()?;
        Ok(config)
    }
}

fn parse_container_path(path: &str, value: String) -> Result<PathBuf, DecodeError> {
    let value = PathBuf::from(value);
    if !value.is_absolute() {
        return Err(DecodeError::invalid(
            path,
            format!(
                "{} is not an absolute path; give the full path of the container CLI, such as {DEFAULT_CONTAINER_PATH}",
                value.display()
            ),
        ));
    }
    Ok(value)
}

fn parse_bind_address(path: &str, value: &str) -> Result<BindAddress, DecodeError> {
    if value == DEFAULT_BIND_ADDRESS {
        return Ok(BindAddress::Tailscale);
    }
    value.parse().map(BindAddress::Ip).map_err(|_| {
        DecodeError::invalid(
            path,
            format!("{value:?} is neither \"tailscale\" nor an IP address"),
        )
    })
}

fn parse_pool_size(path: &str, size: u64) -> Result<usize, DecodeError> {
    if size > MAX_PRECONNECT_POOL_SIZE {
        return Err(DecodeError::invalid(
            path,
            format!("{size} is larger than the maximum of {MAX_PRECONNECT_POOL_SIZE}"),
        ));
    }
    Ok(size as usize)
}

fn parse_metrics_address(path: &str, value: &str) -> Result<Option<SocketAddr>, DecodeError> {
    if value.is_empty() {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| {
        DecodeError::invalid(
            path,
            format!("{value:?} is not an IP address with a port, such as \"127.0.0.1:9464\""),
        )
    })
}

/// Reads a duration that must be greater than zero.
fn read_interval(
    reader: &mut ObjectReader,
    name: &'static str,
    target: &mut Duration,
) -> Result<(), DecodeError> {
    let Some(value) = reader.take_duration(name)? else {
        return Ok(());
    };
    if value.is_zero() {
        return Err(DecodeError::invalid(
            reader.path(name),
            "must be greater than zero",
        ));
    }
    *target = value;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::decode::encode_object as encode;
    use rmpv::Value;

    #[test]
    fn empty_config_gives_defaults() {
        assert_eq!(
            PluginConfig::from_msgpack(&[]).unwrap(),
            PluginConfig::default()
        );
    }

    #[test]
    fn explicit_values_override_defaults() {
        let bytes = encode(vec![
            ("container_path", Value::from("/opt/homebrew/bin/container")),
            ("port_offset", Value::from(20000u64)),
            ("bind_address", Value::from("100.64.0.7")),
            ("metrics_address", Value::from("127.0.0.1:9464")),
            ("fingerprint_interval", Value::from("250ms")),
            (
                "gc",
                Value::Map(vec![(Value::from("container"), Value::from(false))]),
            ),
        ]);
        let config = PluginConfig::from_msgpack(&bytes).unwrap();

        assert_eq!(
            config.container_path,
            PathBuf::from("/opt/homebrew/bin/container")
        );
        assert_eq!(config.port_offset, 20000);
        assert_eq!(
            config.bind_address,
            BindAddress::Ip("100.64.0.7".parse().unwrap())
        );
        assert_eq!(
            config.metrics_address,
            Some("127.0.0.1:9464".parse().unwrap())
        );
        assert_eq!(config.fingerprint_interval, Duration::from_millis(250));
        assert!(!config.gc_container);
    }

    #[test]
    fn invalid_values_name_attribute() {
        let cases = [
            ("container_path", Value::from("container"), "absolute path"),
            ("port_offset", Value::from(70000u64), "0 to 65535"),
            ("bind_address", Value::from("tailnet"), "neither"),
            ("preconnect_pool_size", Value::from(1000u64), "maximum"),
            ("metrics_address", Value::from("localhost"), "with a port"),
            ("stats_interval", Value::from("0s"), "greater than zero"),
            ("command_timeout", Value::from("soon"), "invalid duration"),
        ];
        for (name, value, reason) in cases {
            let error = PluginConfig::from_msgpack(&encode(vec![(name, value)]))
                .unwrap_err()
                .to_string();
            assert!(error.contains(&format!("\"{name}\"")), "{error}");
            assert!(error.contains(reason), "{error}");
        }
    }
}

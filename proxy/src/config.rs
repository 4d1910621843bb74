//! Proxy settings: validated types, their defaults, and the TOML file format.
//!
//! Settings arrive from command-line flags (one listener) or from a TOML file (many
//! listeners). Both end as a [`ProxyConfig`] that has been checked before anything is
//! bound, so nothing downstream validates again. Keys carry their unit (`_ms`, `_s`);
//! the types use [`Duration`].
//!
//! The file format, with every key except `name`, `listen` and `upstream` optional:
//!
//! ```toml
//! engine = "auto"                  # auto | splice | copy, for every listener
//! metrics_listen = "127.0.0.1:9100"
//! drain_timeout_s = 30
//! dns = ["consul=127.0.0.1:8600"]  # SUFFIX=IP[:PORT][,IP[:PORT]...], as --dns
//!
//! [[listener]]
//! name = "web"                     # metrics label: letters, digits, '_', '-', '.'
//! listen = "127.0.0.1:18080"
//! upstream = ["127.0.0.1:8080"]    # IP:PORT, NAME:PORT or srv:NAME, round-robin
//! engine = "copy"                  # overrides the top-level engine
//! preconnect = 4
//! preconnect_max_idle_s = 30
//! max_connections = 10000
//! connect_timeout_ms = 5000
//! idle_timeout_s = 300             # 0 turns the idle timeout off
//! proxy_protocol = "v2"            # v1 | v2; no header when absent
//! ```

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use styx_dns::{RouteOverride, UpstreamName};

use crate::engine::{Engine, splice_available};
use crate::proxy_protocol::ProxyProtocol;
use crate::upstream::UpstreamTarget;

/// Default connection limit per listener.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default upstream connect timeout, in milliseconds.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Default idle timeout, in seconds.
pub const DEFAULT_IDLE_TIMEOUT_S: u64 = 300;
/// Default time a shutdown waits for open connections, in seconds.
pub const DEFAULT_DRAIN_TIMEOUT_S: u64 = 30;
/// Default time a pre-connected socket may wait for a client, in seconds.
pub const DEFAULT_PRECONNECT_MAX_IDLE_S: u64 = 30;
/// Largest pre-connect pool per listener.
pub const MAX_PRECONNECT: usize = 1_000;
/// Maximum length of a listener name, which is also a metrics label value.
pub const MAX_NAME_LEN: usize = 64;

/// The engine requested by the user, before the platform probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EngineChoice {
    /// `splice` on Linux when the probe succeeds, otherwise `copy`.
    #[default]
    Auto,
    /// `splice`, falling back to `copy` when the platform cannot splice.
    Splice,
    /// `copy`: buffered copy through user space, on every platform.
    Copy,
}

impl EngineChoice {
    /// Resolves the choice against this platform.
    pub fn resolve(self) -> Engine {
        match self {
            EngineChoice::Copy => Engine::Copy,
            EngineChoice::Auto | EngineChoice::Splice if splice_available() => Engine::Splice,
            EngineChoice::Auto => Engine::Copy,
            EngineChoice::Splice => {
                tracing::warn!("Splice was requested but is unavailable, using copy");
                Engine::Copy
            }
        }
    }
}

/// Settings of one listener.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Name used in logs and as the `listener` metrics label.
    pub name: String,
    /// Address to accept clients on.
    pub listen: SocketAddr,
    /// Upstream addresses, used round-robin.
    pub upstreams: Vec<SocketAddr>,
    /// Upstreams given by name, resolved through the process's resolver and followed as
    /// their addresses change. They share the round-robin with `upstreams`.
    pub upstream_names: Vec<UpstreamName>,
    /// Forwarding engine.
    pub engine: EngineChoice,
    /// Pre-connected upstream sockets kept ready; 0 turns the pool off.
    pub preconnect: usize,
    /// How long a pre-connected socket may wait for a client before it is replaced.
    pub preconnect_max_idle: Duration,
    /// Connections served at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Timeout of each upstream connect.
    pub connect_timeout: Duration,
    /// Closes a connection after this long without a byte moving; `None` never does.
    pub idle_timeout: Option<Duration>,
    /// PROXY protocol header sent to the upstream; `None` sends none.
    pub proxy_protocol: Option<ProxyProtocol>,
}

impl ListenerConfig {
    /// Returns the listener's upstreams in round-robin order: addresses first, then names.
    pub fn targets(&self) -> Vec<UpstreamTarget> {
        let addrs = self.upstreams.iter().copied().map(UpstreamTarget::Addr);
        let names = self
            .upstream_names
            .iter()
            .cloned()
            .map(UpstreamTarget::Name);
        addrs.chain(names).collect()
    }

    /// Adds `target` to the addresses or the names.
    pub fn add_target(&mut self, target: UpstreamTarget) {
        match target {
            UpstreamTarget::Addr(addr) => self.upstreams.push(addr),
            UpstreamTarget::Name(name) => self.upstream_names.push(name),
        }
    }

    /// Creates a listener config with every option at its default.
    pub fn new(name: impl Into<String>, listen: SocketAddr, upstreams: Vec<SocketAddr>) -> Self {
        Self {
            name: name.into(),
            listen,
            upstreams,
            upstream_names: Vec::new(),
            engine: EngineChoice::Auto,
            preconnect: 0,
            preconnect_max_idle: Duration::from_secs(DEFAULT_PRECONNECT_MAX_IDLE_S),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            connect_timeout: Duration::from_millis(DEFAULT_CONNECT_TIMEOUT_MS),
            idle_timeout: Some(Duration::from_secs(DEFAULT_IDLE_TIMEOUT_S)),
            proxy_protocol: None,
        }
    }
}

/// Settings of one proxy process.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The listeners, each with its own upstreams and options.
    pub listeners: Vec<ListenerConfig>,
    /// Address of the Prometheus metrics endpoint; `None` serves no metrics.
    pub metrics_listen: Option<SocketAddr>,
    /// How long a shutdown waits for open connections before resetting them.
    pub drain_timeout: Duration,
}

/// A config file as read: the proxy settings, and the resolver routes its `dns` key
/// overrides.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// Listeners and process settings.
    pub proxy: ProxyConfig,
    /// Route overrides, in the form of `--dns` values.
    pub dns: Vec<RouteOverride>,
}

/// An invalid setting, or a config file that cannot be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file cannot be read.
    #[error("failed to read config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A value in the config file is invalid; `line` is 1-based.
    #[error("invalid config file {}, line {line}: {message}", path.display())]
    File {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// A value given on the command line or through the API is invalid.
    #[error("invalid {setting}: {message}")]
    Setting {
        setting: &'static str,
        message: String,
    },
}

impl ProxyConfig {
    /// Checks what the types cannot: listener names, duplicate names and addresses,
    /// and non-empty upstream lists.
    ///
    /// # Errors
    /// [`ConfigError::Setting`] naming the first invalid setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |setting, message: String| Err(ConfigError::Setting { setting, message });
        if self.listeners.is_empty() {
            return invalid("listeners", "at least one listener is required".into());
        }
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        for listener in &self.listeners {
            if let Err(message) = check_name(&listener.name) {
                return invalid("listener name", message);
            }
            if !names.insert(listener.name.as_str()) {
                return invalid(
                    "listener name",
                    format!("{:?} is used twice", listener.name),
                );
            }
            // With port 0 the kernel picks a free port, so two such listeners do not clash.
            if listener.listen.port() != 0 && !addrs.insert(listener.listen) {
                return invalid(
                    "listen",
                    format!("{} is used by two listeners", listener.listen),
                );
            }
            if listener.upstreams.is_empty() && listener.upstream_names.is_empty() {
                return invalid(
                    "upstream",
                    "at least one upstream address or name is required".into(),
                );
            }
            if listener.max_connections == 0 {
                return invalid("max connections", "expected at least 1".into());
            }
            if listener.connect_timeout.is_zero() {
                return invalid("connect timeout", "expected at least 1 ms".into());
            }
            if listener.preconnect > MAX_PRECONNECT {
                return invalid("preconnect", format!("expected at most {MAX_PRECONNECT}"));
            }
            if listener.preconnect > 0 && listener.preconnect_max_idle.is_zero() {
                return invalid("preconnect max idle", "expected at least 1 s".into());
            }
        }
        Ok(())
    }

    /// Reads and validates a TOML config file, ignoring its `dns` key (see
    /// [`ConfigFile::read`]).
    ///
    /// # Errors
    /// [`ConfigError::Read`] when the file cannot be read, [`ConfigError::File`] with
    /// the line of the first invalid value.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        ConfigFile::read(path).map(|file| file.proxy)
    }

    /// Parses and validates TOML `text`, ignoring its `dns` key; `path` only names the
    /// file in errors.
    ///
    /// # Errors
    /// [`ConfigError::File`] with the line of the first invalid value.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        ConfigFile::parse(text, path).map(|file| file.proxy)
    }
}

impl ConfigFile {
    /// Reads and validates a TOML config file.
    ///
    /// # Errors
    /// [`ConfigError::Read`] when the file cannot be read, [`ConfigError::File`] with
    /// the line of the first invalid value.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates TOML `text`; `path` only names the file in errors.
    ///
    /// # Errors
    /// [`ConfigError::File`] with the line of the first invalid value.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file_error = |span: Option<Range<usize>>, message: String| ConfigError::File {
            path: path.to_owned(),
            line: span.map_or(1, |span| line_of(text, span.start)),
            message: message.replace('\n', " ").trim().to_owned(),
        };
        let raw: RawFile = toml::from_str(text)
            .map_err(|error| file_error(error.span(), error.message().to_owned()))?;
        raw.into_config()
            .map_err(|(span, message)| file_error(Some(span), message))
    }
}

/// Returns the 1-based line that contains byte `offset` of `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    text.as_bytes()[..offset]
        .iter()
        .filter(|byte| **byte == b'\n')
        .count()
        + 1
}

/// Checks that a listener name is usable as a bounded metrics label.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("{name:?} must have 1 to {MAX_NAME_LEN} characters"));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if !name.chars().all(allowed) {
        return Err(format!(
            "{name:?} may contain only letters, digits, '_', '-' and '.'"
        ));
    }
    Ok(())
}

/// The file as written, before validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    engine: Option<EngineChoice>,
    metrics_listen: Option<SocketAddr>,
    drain_timeout_s: Option<u64>,
    #[serde(default)]
    dns: Vec<Spanned<String>>,
    #[serde(default)]
    listener: Vec<Spanned<RawListener>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: Spanned<String>,
    listen: Spanned<SocketAddr>,
    // Strings, parsed in `into_listener`, so an invalid entry's error names its own line
    // rather than the line the list starts on.
    upstream: Spanned<Vec<Spanned<String>>>,
    engine: Option<EngineChoice>,
    preconnect: Option<Spanned<usize>>,
    preconnect_max_idle_s: Option<Spanned<u64>>,
    max_connections: Option<Spanned<usize>>,
    connect_timeout_ms: Option<Spanned<u64>>,
    idle_timeout_s: Option<u64>,
    proxy_protocol: Option<ProxyProtocol>,
}

/// An invalid value: where it is in the file and what is wrong with it.
type Located = (Range<usize>, String);

impl RawFile {
    fn into_config(self) -> Result<ConfigFile, Located> {
        if self.listener.is_empty() {
            return Err((0..0, "at least one [[listener]] table is required".into()));
        }
        let engine = self.engine.unwrap_or_default();
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        let mut listeners = Vec::with_capacity(self.listener.len());

        for raw in self.listener {
            let raw = raw.into_inner();
            let name_span = raw.name.span();
            check_name(raw.name.get_ref()).map_err(|message| {
                (
                    name_span.clone(),
                    format!("invalid listener name {message}"),
                )
            })?;
            if !names.insert(raw.name.get_ref().clone()) {
                return Err((
                    name_span,
                    format!("listener name {:?} is used twice", raw.name.get_ref()),
                ));
            }
            if raw.listen.get_ref().port() != 0 && !addrs.insert(*raw.listen.get_ref()) {
                return Err((
                    raw.listen.span(),
                    format!("listen address {} is used twice", raw.listen.get_ref()),
                ));
            }
            listeners.push(raw.into_listener(engine)?);
        }

        let proxy = ProxyConfig {
            listeners,
            metrics_listen: self.metrics_listen,
            drain_timeout: Duration::from_secs(
                self.drain_timeout_s.unwrap_or(DEFAULT_DRAIN_TIMEOUT_S),
            ),
        };
        let dns = self
            .dns
            .into_iter()
            .map(parse_spanned::<RouteOverride>)
            .collect::<Result<_, _>>()?;
        Ok(ConfigFile { proxy, dns })
    }
}

impl RawListener {
    fn into_listener(self, default_engine: EngineChoice) -> Result<ListenerConfig, Located> {
        let mut config =
            ListenerConfig::new(self.name.into_inner(), self.listen.into_inner(), Vec::new());
        if self.upstream.get_ref().is_empty() {
            return Err((
                self.upstream.span(),
                "upstream must list at least one address or name".into(),
            ));
        }
        for target in self.upstream.into_inner() {
            config.add_target(parse_spanned(target)?);
        }
        config.engine = self.engine.unwrap_or(default_engine);
        config.proxy_protocol = self.proxy_protocol;
        if let Some(seconds) = self.idle_timeout_s {
            config.idle_timeout = (seconds > 0).then(|| Duration::from_secs(seconds));
        }
        if let Some(max) = self.max_connections {
            config.max_connections = at_least(max, 1, "max_connections")?;
        }
        if let Some(ms) = self.connect_timeout_ms {
            config.connect_timeout = Duration::from_millis(at_least(ms, 1, "connect_timeout_ms")?);
        }
        if let Some(seconds) = self.preconnect_max_idle_s {
            config.preconnect_max_idle =
                Duration::from_secs(at_least(seconds, 1, "preconnect_max_idle_s")?);
        }
        if let Some(count) = self.preconnect {
            if *count.get_ref() > MAX_PRECONNECT {
                return Err((
                    count.span(),
                    format!("preconnect must be at most {MAX_PRECONNECT}"),
                ));
            }
            config.preconnect = count.into_inner();
        }
        Ok(config)
    }
}

/// Parses a string value, locating its error at the value.
fn parse_spanned<T>(value: Spanned<String>) -> Result<T, Located>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let span = value.span();
    value
        .into_inner()
        .parse()
        .map_err(|error: T::Err| (span, error.to_string()))
}

fn at_least<T: PartialOrd + std::fmt::Display + Copy>(
    value: Spanned<T>,
    min: T,
    key: &str,
) -> Result<T, Located> {
    let inner = *value.get_ref();
    if inner < min {
        return Err((
            value.span(),
            format!("{key} must be at least {min}, got {inner}"),
        ));
    }
    Ok(inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ProxyConfig, ConfigError> {
        ProxyConfig::from_toml(text, Path::new("proxy.toml"))
    }

    fn error_line(text: &str) -> (usize, String) {
        match parse(text) {
            Err(ConfigError::File { line, message, .. }) => (line, message),
            other => panic!("expected a file error, got {other:?}"),
        }
    }

    const GOOD: &str = r#"
engine = "copy"
metrics_listen = "127.0.0.1:9100"
drain_timeout_s = 5

[[listener]]
name = "web"
listen = "127.0.0.1:18080"
upstream = ["127.0.0.1:8080", "127.0.0.1:8081"]
preconnect = 4
idle_timeout_s = 0
proxy_protocol = "v2"

[[listener]]
name = "db"
listen = "127.0.0.1:15432"
upstream = ["127.0.0.1:5432"]
engine = "splice"
connect_timeout_ms = 250
"#;

    /// Checks that the example file in the README parses, so it stays current.
    #[test]
    fn readme_example_parses() {
        let readme = include_str!("../../README.md");
        let (_, after) = readme
            .split_once("```toml\n")
            .expect("README has a TOML example");
        let (example, _) = after.split_once("```").expect("the TOML example is closed");

        let config = parse(example).expect("README example is valid");
        let names: Vec<&str> = config
            .listeners
            .iter()
            .map(|listener| listener.name.as_str())
            .collect();
        assert_eq!(names, ["web", "api"]);
    }

    #[test]
    fn file_full_example() {
        let config = parse(GOOD).expect("example is valid");
        assert_eq!(config.drain_timeout, Duration::from_secs(5));
        assert_eq!(
            config.metrics_listen,
            Some("127.0.0.1:9100".parse().unwrap())
        );
        let [web, db] = &config.listeners[..] else {
            panic!("expected two listeners");
        };
        assert_eq!(web.engine, EngineChoice::Copy);
        assert_eq!(web.upstreams.len(), 2);
        assert_eq!(web.preconnect, 4);
        assert_eq!(web.idle_timeout, None);
        assert_eq!(web.proxy_protocol, Some(ProxyProtocol::V2));
        assert_eq!(db.engine, EngineChoice::Splice);
        assert_eq!(db.connect_timeout, Duration::from_millis(250));
        assert_eq!(db.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(
            db.idle_timeout,
            Some(Duration::from_secs(DEFAULT_IDLE_TIMEOUT_S))
        );
    }

    #[test]
    fn file_unknown_key_names_line() {
        let text = "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nupstream = [\"127.0.0.1:2\"]\ntimeout = 3\n";
        let (line, message) = error_line(text);
        assert_eq!(line, 5);
        assert!(message.contains("timeout"), "{message}");
    }

    #[test]
    fn file_bad_address_names_line() {
        let text =
            "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1\"\nupstream = [\"127.0.0.1:2\"]\n";
        let (line, _) = error_line(text);
        assert_eq!(line, 3);
    }

    #[test]
    fn file_duplicate_name_names_line() {
        let text = "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nupstream = [\"127.0.0.1:2\"]\n\
                    [[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:3\"\nupstream = [\"127.0.0.1:2\"]\n";
        let (line, message) = error_line(text);
        assert_eq!(line, 6);
        assert!(message.contains("used twice"), "{message}");
    }

    #[test]
    fn file_zero_max_connections_names_line() {
        let text = "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nupstream = [\"127.0.0.1:2\"]\nmax_connections = 0\n";
        let (line, message) = error_line(text);
        assert_eq!(line, 5);
        assert!(message.contains("max_connections"), "{message}");
    }

    #[test]
    fn file_empty_upstream_names_line() {
        let text = "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nupstream = []\n";
        assert_eq!(error_line(text).0, 4);
    }

    #[test]
    fn file_bad_name_names_line() {
        let text = "[[listener]]\nname = \"a b\"\nlisten = \"127.0.0.1:1\"\nupstream = [\"127.0.0.1:2\"]\n";
        assert_eq!(error_line(text).0, 2);
    }

    #[test]
    fn file_without_listener_rejected() {
        let (_, message) = error_line("engine = \"copy\"\n");
        assert!(message.contains("[[listener]]"), "{message}");
    }

    #[test]
    fn validate_rejects_duplicates_and_empty_upstreams() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let upstream: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let mut config = ProxyConfig {
            listeners: vec![ListenerConfig::new("a", addr, vec![upstream])],
            metrics_listen: None,
            drain_timeout: Duration::from_secs(1),
        };
        assert!(config.validate().is_ok());

        config
            .listeners
            .push(ListenerConfig::new("b", addr, vec![upstream]));
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Setting {
                setting: "listen",
                ..
            })
        ));

        config.listeners[1] = ListenerConfig::new("b", "127.0.0.1:3".parse().unwrap(), Vec::new());
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Setting {
                setting: "upstream",
                ..
            })
        ));
    }
    #[test]
    fn file_names_and_dns() {
        let text = "dns = [\"consul=127.0.0.1:8600\", \"ts.net=127.0.0.1:5353,127.0.0.2:53\"]\n\
                    [[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n\
                    upstream = [\"127.0.0.1:2\", \"web.service.consul:80\", \"srv:api.service.consul\"]\n";
        let file = ConfigFile::parse(text, Path::new("proxy.toml")).expect("example is valid");
        assert_eq!(file.dns.len(), 2);
        assert_eq!(file.dns[1].servers.len(), 2);
        let listener = &file.proxy.listeners[0];
        assert_eq!(listener.upstreams, vec!["127.0.0.1:2".parse().unwrap()]);
        assert_eq!(
            listener.upstream_names,
            vec![
                "web.service.consul:80".parse().unwrap(),
                "srv:api.service.consul".parse().unwrap()
            ]
        );
        assert_eq!(listener.targets().len(), 3);
    }

    #[test]
    fn file_bad_dns_names_line() {
        let text = "engine = \"copy\"\ndns = [\"consul\"]\n\
                    [[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nupstream = [\"127.0.0.1:2\"]\n";
        let (line, message) = error_line(text);
        assert_eq!(line, 2);
        assert!(message.contains("expected SUFFIX=IP[:PORT]"), "{message}");
    }

    #[test]
    fn file_bad_upstream_name_names_line() {
        let text = "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n\
                    upstream = [\"127.0.0.1:2\",\n  \"web.service.consul\"]\n";
        let (line, message) = error_line(text);
        assert_eq!(line, 5);
        assert!(
            message.contains("expected IP:PORT, NAME:PORT or srv:NAME"),
            "{message}"
        );
    }
}

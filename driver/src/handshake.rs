//! The go-plugin handshake: the environment checks before serving, and the line the
//! plugin prints on stdout once its socket accepts connections.
//!
//! Nomad starts the plugin with `NOMAD_PLUGIN_MAGIC_COOKIE` set and
//! `PLUGIN_PROTOCOL_VERSIONS` listing the app protocol versions it accepts. The plugin
//! answers on stdout with `CORE|APP|NETWORK|ADDRESS|PROTOCOL|` followed by a newline,
//! for example `1|2|unix|/tmp/plugin1234|grpc|`. The empty sixth field is where an
//! AutoMTLS certificate would go; Nomad does not use AutoMTLS.
//!
//! `PLUGIN_MIN_PORT` and `PLUGIN_MAX_PORT` only matter for TCP listeners, and this
//! plugin always listens on a unix socket.

use std::path::Path;

/// Environment variable that carries the magic cookie.
pub const MAGIC_COOKIE_KEY: &str = "NOMAD_PLUGIN_MAGIC_COOKIE";

/// The value Nomad sets for every plugin it starts.
pub const MAGIC_COOKIE_VALUE: &str =
    "e4327c2e01eabfd75a8a67adb114fb34a757d57eee7728d857a8cec6e91a7255";

/// Environment variable listing the app protocol versions the host accepts.
pub const PROTOCOL_VERSIONS_KEY: &str = "PLUGIN_PROTOCOL_VERSIONS";

/// go-plugin's core protocol version.
pub const CORE_PROTOCOL_VERSION: u32 = 1;

/// Nomad's app protocol version for plugins.
pub const APP_PROTOCOL_VERSION: u32 = 2;

/// Error for an environment that is not a Nomad client's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error(
        "styx-driver is a Nomad task driver plugin and is not meant to be run by hand: \
         copy it into the Nomad client's plugin_dir as apple-container and configure it \
         with a plugin \"apple-container\" block; Nomad then starts it \
         ({MAGIC_COOKIE_KEY} is not set)"
    )]
    MissingCookie,

    #[error(
        "styx-driver was started with a {MAGIC_COOKIE_KEY} that is not Nomad's; \
         only a Nomad client can start this plugin"
    )]
    WrongCookie,

    #[error(
        "the plugin host accepts app protocol versions {offered:?} ({PROTOCOL_VERSIONS_KEY}), \
         but styx-driver speaks only version {APP_PROTOCOL_VERSION}; use a Nomad client \
         of version 0.9 or newer"
    )]
    UnsupportedProtocol { offered: String },
}

/// Checks the environment Nomad sets. `lookup` reads one variable, which keeps the
/// check testable without touching the process environment.
pub fn check_environment(lookup: impl Fn(&str) -> Option<String>) -> Result<(), HandshakeError> {
    match lookup(MAGIC_COOKIE_KEY) {
        None => return Err(HandshakeError::MissingCookie),
        Some(cookie) if cookie != MAGIC_COOKIE_VALUE => return Err(HandshakeError::WrongCookie),
        Some(_) => {}
    }

    // An unset or empty list leaves the version check to the host, which reads it from
    // the handshake line.
    let Some(offered) = lookup(PROTOCOL_VERSIONS_KEY).filter(|list| !list.trim().is_empty()) else {
        return Ok(());
    };
    let supported = offered
        .split(',')
        .any(|version| version.trim().parse() == Ok(APP_PROTOCOL_VERSION));
    if !supported {
        return Err(HandshakeError::UnsupportedProtocol { offered });
    }
    Ok(())
}

/// Formats the handshake line for a unix socket, newline included.
pub fn handshake_line(socket: &Path) -> String {
    format!(
        "{CORE_PROTOCOL_VERSION}|{APP_PROTOCOL_VERSION}|unix|{}|grpc|\n",
        socket.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        move |key| map.get(key).cloned()
    }

    #[test]
    fn nomad_environment_passes() {
        let lookup = env(&[
            (MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE),
            (PROTOCOL_VERSIONS_KEY, "2"),
        ]);
        assert_eq!(check_environment(lookup), Ok(()));
    }

    #[test]
    fn cookie_is_required() {
        assert_eq!(
            check_environment(env(&[])),
            Err(HandshakeError::MissingCookie)
        );
        let wrong = env(&[(MAGIC_COOKIE_KEY, "nope")]);
        assert_eq!(check_environment(wrong), Err(HandshakeError::WrongCookie));
    }

    #[test]
    fn protocol_two_must_be_offered() {
        let lookup = env(&[
            (MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE),
            (PROTOCOL_VERSIONS_KEY, "3,4"),
        ]);
        assert!(matches!(
            check_environment(lookup),
            Err(HandshakeError::UnsupportedProtocol { .. })
        ));
        let lookup = env(&[
            (MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE),
            (PROTOCOL_VERSIONS_KEY, "1, 2"),
        ]);
        assert_eq!(check_environment(lookup), Ok(()));
    }

    #[test]
    fn line_has_six_fields() {
        let line = handshake_line(Path::new("/tmp/plugin123"));
        assert_eq!(line, "1|2|unix|/tmp/plugin123|grpc|\n");
    }
}

//! File locations of a node.
//!
//! Default: data under `~/Library/Application Support/Styx` and launchd agents in
//! `~/Library/LaunchAgents`. With `--prefix DIR`, the data lives in `DIR` and the agents
//! in `DIR/LaunchAgents`, so a test or a second setup never touches the user's Library.

use std::path::{Path, PathBuf};

/// Name of the node state file at the data root.
pub const STATE_FILE: &str = "styx.toml";

/// Failure to work out the default locations.
#[derive(Debug, thiserror::Error)]
#[error("HOME is not set: pass --prefix DIR to choose where Styx keeps its files")]
pub struct LayoutError;

/// Paths of one node's data root and its launchd agents directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Directory that contains configs, certificates, secrets, data and logs.
    pub root: PathBuf,
    /// Directory that contains the launchd agent plists.
    pub launch_agents: PathBuf,
}

impl Layout {
    /// Resolves the layout from `--prefix`, or from `HOME` when no prefix is given.
    pub fn resolve(prefix: Option<&Path>) -> Result<Self, LayoutError> {
        if let Some(prefix) = prefix {
            let prefix = absolute(prefix);
            return Ok(Self {
                launch_agents: prefix.join("LaunchAgents"),
                root: prefix,
            });
        }

        let home = std::env::var_os("HOME")
            .filter(|home| !home.is_empty())
            .ok_or(LayoutError)?;
        let library = PathBuf::from(home).join("Library");
        Ok(Self {
            root: library.join("Application Support").join("Styx"),
            launch_agents: library.join("LaunchAgents"),
        })
    }

    pub fn state_file(&self) -> PathBuf {
        self.root.join(STATE_FILE)
    }

    pub fn tls_dir(&self) -> PathBuf {
        self.root.join("tls")
    }

    pub fn secrets_dir(&self) -> PathBuf {
        self.root.join("secrets")
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }

    pub fn plugins_dir(&self) -> PathBuf {
        self.root.join("plugins")
    }

    /// Certificate file `tls/<name>.pem`.
    pub fn cert(&self, name: &str) -> PathBuf {
        self.tls_dir().join(format!("{name}.pem"))
    }

    /// Private key file `tls/<name>-key.pem`.
    pub fn key(&self, name: &str) -> PathBuf {
        self.tls_dir().join(format!("{name}-key.pem"))
    }

    /// Directory of one service: its config file and its `data/` directory.
    pub fn service_dir(&self, service: &str) -> PathBuf {
        self.root.join(service)
    }

    pub fn service_config(&self, service: &str) -> PathBuf {
        self.service_dir(service).join(format!("{service}.hcl"))
    }

    pub fn service_data(&self, service: &str) -> PathBuf {
        self.service_dir(service).join("data")
    }

    pub fn consul_gossip_key(&self) -> PathBuf {
        self.secrets_dir().join("consul-gossip.key")
    }

    pub fn nomad_gossip_key(&self) -> PathBuf {
        self.secrets_dir().join("nomad-gossip.key")
    }

    /// Vault's unseal key and root token, as returned by its initialisation.
    pub fn vault_init(&self) -> PathBuf {
        self.secrets_dir().join("vault-init.json")
    }

    /// Plist of the launchd agent with `label`.
    pub fn plist(&self, label: &str) -> PathBuf {
        self.launch_agents.join(format!("{label}.plist"))
    }

    /// Maps a path under this layout's root to the same place under `other_root`.
    ///
    /// Configs name final paths, but are written into a staging root first.
    pub fn rebase(&self, path: &Path, other_root: &Path) -> PathBuf {
        match path.strip_prefix(&self.root) {
            Ok(relative) => other_root.join(relative),
            Err(_) => path.to_owned(),
        }
    }
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_owned();
    }
    std::env::current_dir()
        .map(|cwd| cwd.join(path))
        .unwrap_or_else(|_| path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_puts_agents_inside() {
        let layout = Layout::resolve(Some(Path::new("/tmp/styx-node"))).unwrap();

        assert_eq!(layout.root, Path::new("/tmp/styx-node"));
        assert_eq!(
            layout.launch_agents,
            Path::new("/tmp/styx-node/LaunchAgents")
        );
        assert_eq!(layout.key("ca"), Path::new("/tmp/styx-node/tls/ca-key.pem"));
    }

    #[test]
    fn rebase_maps_into_staging() {
        let layout = Layout::resolve(Some(Path::new("/srv/styx"))).unwrap();

        let moved = layout.rebase(&layout.cert("ca"), Path::new("/srv/styx.staging"));

        assert_eq!(moved, Path::new("/srv/styx.staging/tls/ca.pem"));
    }
}

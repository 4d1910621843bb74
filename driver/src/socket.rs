//! The plugin's unix socket, created the way go-plugin creates it.
//!
//! The socket is named `plugin<random>` in `$PLUGIN_UNIX_SOCKET_DIR`, or in the temporary
//! directory when that is unset. It is readable and writable by its owner only, unless
//! the host sets `PLUGIN_UNIX_SOCKET_GROUP`: then the socket belongs to that group and
//! the group may use it too (mode 0660). Nomad sets neither variable.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// Environment variable naming the directory for the socket.
pub const UNIX_SOCKET_DIR_KEY: &str = "PLUGIN_UNIX_SOCKET_DIR";

/// Environment variable naming the group that may use the socket, by name or number.
pub const UNIX_SOCKET_GROUP_KEY: &str = "PLUGIN_UNIX_SOCKET_GROUP";

/// Directory and group of the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketOptions {
    pub dir: PathBuf,
    /// Group name or numeric id that may also use the socket.
    pub group: Option<String>,
}

impl SocketOptions {
    /// Reads the options from the environment through `lookup`.
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let dir = lookup(UNIX_SOCKET_DIR_KEY)
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let group = lookup(UNIX_SOCKET_GROUP_KEY).filter(|group| !group.is_empty());
        Self { dir, group }
    }
}

/// Binds the socket. The returned path removes the file when dropped, so the socket
/// disappears when the plugin exits but not when a client disconnects.
pub fn bind(options: &SocketOptions) -> io::Result<(UnixListener, tempfile::TempPath)> {
    let socket = tempfile::Builder::new()
        .prefix("plugin")
        .rand_bytes(10)
        .make_in(&options.dir, |path| {
            std::os::unix::net::UnixListener::bind(path)
        })?;
    let (listener, path) = socket.into_parts();

    match &options.group {
        None => fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?,
        Some(group) => {
            let gid = resolve_group(group, Path::new("/etc/group"))?;
            std::os::unix::fs::chown(&path, None, Some(gid))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o660))?;
        }
    }

    listener.set_nonblocking(true)?;
    Ok((UnixListener::from_std(listener)?, path))
}

/// Turns a group name or number into a group id, looking names up in `group_file`.
///
/// NOTE: on macOS most groups live in Directory Services, not in `/etc/group`, so a
/// name may not be found there; a numeric id always works.
fn resolve_group(group: &str, group_file: &Path) -> io::Result<u32> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }

    let entries = fs::read_to_string(group_file)?;
    entries
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let gid = fields.nth(1)?;
            (name == group).then(|| gid.parse().ok()).flatten()
        })
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "group {group:?} from {UNIX_SOCKET_GROUP_KEY} not found in {}; give a numeric group id instead",
                    group_file.display()
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_number_or_name() {
        let dir = tempfile::tempdir().unwrap();
        let group_file = dir.path().join("group");
        fs::write(&group_file, "# comment\nroot:x:0:\nnomad:x:4646:agent\n").unwrap();

        assert_eq!(resolve_group("20", &group_file).unwrap(), 20);
        assert_eq!(resolve_group("nomad", &group_file).unwrap(), 4646);
        let error = resolve_group("staff", &group_file).unwrap_err();
        assert!(error.to_string().contains("\"staff\""), "{error}");
    }

    #[test]
    fn options_default_to_temp_dir() {
        let options = SocketOptions::from_env(|_| None);
        assert_eq!(options.dir, std::env::temp_dir());
        assert_eq!(options.group, None);
    }

    #[tokio::test]
    async fn socket_is_private_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let options = SocketOptions {
            dir: dir.path().to_owned(),
            group: None,
        };
        let (_listener, path) = bind(&options).unwrap();
        let socket = path.to_path_buf();

        let mode = fs::metadata(&socket).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        drop(path);
        assert!(!socket.exists());
    }
}

//! Putting a generated setup in place without ever leaving half of it behind.
//!
//! Every file of a new setup is first written into a staging directory next to the data
//! root. Only when all of them exist does the commit step move an existing setup aside
//! (with `--force`), rename the staging directory to the data root, and write the launchd
//! plists. A failure before the rename removes the staging directory. A failure after it
//! undoes the rename and restores the backup, or reports exactly which paths remain.

use std::path::{Path, PathBuf};

use crate::files::{self, FileError};
use crate::launchd;
use crate::layout::{Layout, STATE_FILE};
use crate::state::NodeState;

/// Failure to put a setup in place.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(
        "a Styx setup already exists at {}: pass --force to replace it (the old setup is \
         moved to a backup directory first)",
        root.display()
    )]
    Exists { root: PathBuf },
    #[error(
        "{} is not a Styx setup because it is {description}: choose another --prefix, such \
         as a new or empty directory. --force replaces only a setup that Styx wrote",
        root.display()
    )]
    NotStyx { root: PathBuf, description: String },
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{error}; {remains}")]
    Partial { error: FileError, remains: String },
}

/// Contents of a node's data root before a new setup is written there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Existing {
    /// The data root is missing or an empty directory, and no Styx plist exists.
    Nothing,
    /// A setup that Styx wrote: the data root contains `styx.toml` or only the agents
    /// directory with Styx plists, or the data root is missing but Styx plists remain.
    Setup,
    /// A file, a symbolic link, or a directory with entries that Styx did not write,
    /// described for the error message (such as "a directory that contains notes.txt").
    Foreign { description: String },
}

/// Classifies the contents of the data root of `layout`.
///
/// Only `styx.toml` marks a setup, because every commit writes it together with the rest
/// of the data root. A symbolic link is never taken for a setup: the commit would replace
/// the link, not the directory it points to.
pub fn inspect(layout: &Layout) -> Result<Existing, FileError> {
    let root = &layout.root;
    let metadata = match std::fs::symlink_metadata(root) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(if existing_plists(layout).is_empty() {
                Existing::Nothing
            } else {
                Existing::Setup
            });
        }
        Err(source) => {
            return Err(FileError {
                action: "read the metadata of",
                path: root.clone(),
                source,
            });
        }
    };

    if metadata.is_symlink() {
        let target = std::fs::read_link(root)
            .map(|target| format!(" to {}", target.display()))
            .unwrap_or_default();
        return Ok(Existing::Foreign {
            description: format!("a symbolic link{target}"),
        });
    }
    if !metadata.is_dir() {
        return Ok(Existing::Foreign {
            description: "a file".to_owned(),
        });
    }

    let read_error = |source| FileError {
        action: "read directory",
        path: root.clone(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root).map_err(read_error)? {
        names.push(entry.map_err(read_error)?.file_name());
    }
    if names.iter().any(|name| name == STATE_FILE) {
        return Ok(Existing::Setup);
    }

    let mut foreign: Vec<String> = names
        .iter()
        .filter(|name| !is_styx_agents_dir(layout, &root.join(name)))
        .map(|name| name.to_string_lossy().into_owned())
        .collect();
    if foreign.is_empty() {
        return Ok(if names.is_empty() && existing_plists(layout).is_empty() {
            Existing::Nothing
        } else {
            Existing::Setup
        });
    }

    foreign.sort();
    Ok(Existing::Foreign {
        description: format!(
            "a directory that contains {} but no {STATE_FILE}",
            list_names(&foreign)
        ),
    })
}

/// Returns an error unless `layout` has no setup, or `force` allows replacing the Styx
/// setup there. Returns whether a setup exists.
///
/// Anything at the data root that Styx did not write is an error even with `force`, so
/// `--force` never moves a user's files aside.
pub fn check_existing(layout: &Layout, force: bool) -> Result<bool, InstallError> {
    match inspect(layout)? {
        Existing::Nothing => Ok(false),
        Existing::Setup if force => Ok(true),
        Existing::Setup => Err(InstallError::Exists {
            root: layout.root.clone(),
        }),
        Existing::Foreign { description } => Err(InstallError::NotStyx {
            root: layout.root.clone(),
            description,
        }),
    }
}

/// Returns true when `path` is the agents directory and contains nothing but Styx plists.
fn is_styx_agents_dir(layout: &Layout, path: &Path) -> bool {
    if path != layout.launch_agents || !path.is_dir() {
        return false;
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return false;
    };
    entries
        .filter_map(Result::ok)
        .all(|entry| is_styx_plist_name(&entry.file_name().to_string_lossy()))
}

fn is_styx_plist_name(name: &str) -> bool {
    name.strip_prefix(launchd::LABEL_PREFIX)
        .is_some_and(|rest| rest.starts_with('.') && rest.ends_with(".plist"))
}

/// Formats up to three names, then how many more there are.
fn list_names(names: &[String]) -> String {
    const SHOWN: usize = 3;
    let listed = names[..names.len().min(SHOWN)].join(", ");
    match names.len().saturating_sub(SHOWN) {
        0 => listed,
        1 => format!("{listed} and 1 more entry"),
        more => format!("{listed} and {more} more entries"),
    }
}

fn existing_plists(layout: &Layout) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(&layout.launch_agents) else {
        return Vec::new();
    };
    let mut plists: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(is_styx_plist_name)
        })
        .collect();
    plists.sort();
    plists
}

/// A setup being written into a staging directory next to the data root.
pub struct Staging {
    layout: Layout,
    dir: PathBuf,
}

impl Staging {
    /// Creates an empty staging directory for `layout`.
    pub fn create(layout: &Layout) -> Result<Self, FileError> {
        if let Some(parent) = layout.root.parent() {
            files::create_private_dir(parent)?;
        }
        let dir = files::sibling_with_timestamp(&layout.root, "staging");
        files::create_private_dir(&dir)?;
        Ok(Self {
            layout: layout.clone(),
            dir,
        })
    }

    /// Writes `contents` to where `final_path` will be once committed.
    pub fn write(&self, final_path: &Path, contents: &[u8], mode: u32) -> Result<(), FileError> {
        let path = self.layout.rebase(final_path, &self.dir);
        if let Some(parent) = path.parent() {
            files::create_private_dir(parent)?;
        }
        files::write_atomic(&path, contents, mode)
    }

    /// Creates the directory that will be at `final_path`.
    pub fn create_dir(&self, final_path: &Path) -> Result<(), FileError> {
        files::create_private_dir(&self.layout.rebase(final_path, &self.dir))
    }

    /// Creates a symbolic link at `final_path` pointing to `target`.
    pub fn symlink(&self, target: &Path, final_path: &Path) -> Result<(), FileError> {
        let path = self.layout.rebase(final_path, &self.dir);
        if let Some(parent) = path.parent() {
            files::create_private_dir(parent)?;
        }
        std::os::unix::fs::symlink(target, &path).map_err(|source| FileError {
            action: "create symbolic link",
            path,
            source,
        })
    }

    /// Removes the staging directory and everything in it.
    pub fn discard(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Moves the staged setup into place, then writes one plist per service of `state`.
    ///
    /// With an existing setup (allowed by `--force`), the data root and the Styx plists
    /// are first moved to `<root>.backup-<timestamp>`, whose path is returned.
    pub fn commit(self, state: &NodeState) -> Result<Option<PathBuf>, InstallError> {
        let layout = self.layout.clone();
        let backup = match self.move_existing_aside() {
            Ok(backup) => backup,
            Err(error) => {
                self.discard();
                return Err(error);
            }
        };

        if layout.root.is_dir() {
            // Only an empty directory is left here: rename cannot replace it on every
            // platform, so remove it.
            let _ = std::fs::remove_dir(&layout.root);
        }
        if let Err(error) = files::rename(&self.dir, &layout.root) {
            let remains = restore_backup(&layout, backup.as_deref());
            self.discard();
            return Err(InstallError::Partial { error, remains });
        }

        if let Err(error) = write_plists(&layout, state) {
            let remains = self.undo_commit(state, backup.as_deref());
            return Err(InstallError::Partial { error, remains });
        }
        Ok(backup)
    }

    fn move_existing_aside(&self) -> Result<Option<PathBuf>, InstallError> {
        let layout = &self.layout;

        // Checked again because files may have appeared since `check_existing`: only a
        // setup that Styx wrote is ever moved aside.
        match inspect(layout)? {
            Existing::Nothing => return Ok(None),
            Existing::Setup => {}
            Existing::Foreign { description } => {
                return Err(InstallError::NotStyx {
                    root: layout.root.clone(),
                    description,
                });
            }
        }
        let plists = existing_plists(layout);
        let root_used = !files::is_missing_or_empty(&layout.root);

        let backup = files::sibling_with_timestamp(&layout.root, "backup");
        if root_used {
            files::rename(&layout.root, &backup)?;
        } else {
            files::create_private_dir(&backup)?;
        }

        // With --prefix the plists live inside the root and moved along with it.
        let plist_backup = backup.join("LaunchAgents");
        for plist in plists
            .iter()
            .filter(|plist| !plist.starts_with(&layout.root))
        {
            files::create_private_dir(&plist_backup)?;
            let name = plist.file_name().expect("plist paths have a file name");
            files::rename(plist, &plist_backup.join(name))?;
        }
        Ok(Some(backup))
    }

    fn undo_commit(self, state: &NodeState, backup: Option<&Path>) -> String {
        let layout = self.layout.clone();
        for service in state.services() {
            let _ = std::fs::remove_file(layout.plist(&launchd::label(service)));
        }
        if let Err(error) = files::rename(&layout.root, &self.dir) {
            return format!(
                "the new setup remains at {} ({error})",
                layout.root.display()
            );
        }
        self.discard();
        restore_backup(&layout, backup)
    }
}

fn restore_backup(layout: &Layout, backup: Option<&Path>) -> String {
    let Some(backup) = backup else {
        return "nothing was changed".to_owned();
    };

    let plist_backup = backup.join("LaunchAgents");
    let restore_plists =
        !plist_backup.starts_with(&layout.root) && !layout.launch_agents.starts_with(&layout.root);
    let result = files::rename(backup, &layout.root);
    if let Err(error) = result {
        return format!("the previous setup is at {} ({error})", backup.display());
    }

    if restore_plists {
        let moved_plists = layout.root.join("LaunchAgents");
        if let Ok(entries) = std::fs::read_dir(&moved_plists) {
            for entry in entries.filter_map(Result::ok) {
                let _ = files::rename(&entry.path(), &layout.launch_agents.join(entry.file_name()));
            }
            let _ = std::fs::remove_dir(&moved_plists);
        }
    }
    "the previous setup was restored".to_owned()
}

fn write_plists(layout: &Layout, state: &NodeState) -> Result<(), FileError> {
    files::create_private_dir(&layout.launch_agents)?;
    for service in state.services() {
        let path = layout.plist(&launchd::label(service));
        files::write_atomic(
            &path,
            &launchd::plist(state, layout, service),
            files::MODE_PUBLIC,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a layout whose agents directory is a regular file, so writing the plists
    /// fails after the rename.
    fn layout_with_broken_agents_dir(dir: &Path) -> Layout {
        let agents = dir.join("agents-is-a-file");
        std::fs::write(&agents, b"").unwrap();
        Layout {
            root: dir.join("styx"),
            launch_agents: agents,
        }
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn failed_plists_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let layout = layout_with_broken_agents_dir(dir.path());
        let staging = Staging::create(&layout).unwrap();
        staging
            .write(&layout.state_file(), b"new", files::MODE_SECRET)
            .unwrap();

        let error = staging.commit(&NodeState::example_server()).unwrap_err();

        assert!(error.to_string().contains("nothing was changed"), "{error}");
        assert_eq!(entries(dir.path()), ["agents-is-a-file"]);
    }

    #[test]
    fn failed_plists_restore_backup() {
        let dir = tempfile::tempdir().unwrap();
        let layout = layout_with_broken_agents_dir(dir.path());
        files::create_private_dir(&layout.root).unwrap();
        std::fs::write(layout.state_file(), b"old").unwrap();
        let staging = Staging::create(&layout).unwrap();
        staging
            .write(&layout.state_file(), b"new", files::MODE_SECRET)
            .unwrap();

        let error = staging.commit(&NodeState::example_server()).unwrap_err();

        assert!(
            error
                .to_string()
                .contains("the previous setup was restored"),
            "{error}"
        );
        assert_eq!(std::fs::read(layout.state_file()).unwrap(), b"old");
        assert_eq!(entries(dir.path()), ["agents-is-a-file", "styx"]);
    }

    fn prefix_layout(root: &Path) -> Layout {
        Layout {
            root: root.to_owned(),
            launch_agents: root.join("LaunchAgents"),
        }
    }

    #[test]
    fn inspect_tells_setup_from_foreign() {
        let dir = tempfile::tempdir().unwrap();
        let layout = prefix_layout(&dir.path().join("styx"));
        assert_eq!(inspect(&layout).unwrap(), Existing::Nothing);

        files::create_private_dir(&layout.root).unwrap();
        assert_eq!(
            inspect(&layout).unwrap(),
            Existing::Nothing,
            "empty directory"
        );

        std::fs::write(layout.root.join("notes.txt"), b"mine").unwrap();
        assert_eq!(
            inspect(&layout).unwrap(),
            Existing::Foreign {
                description: "a directory that contains notes.txt but no styx.toml".to_owned()
            }
        );

        std::fs::write(layout.state_file(), b"").unwrap();
        assert_eq!(
            inspect(&layout).unwrap(),
            Existing::Setup,
            "styx.toml marks it"
        );
    }

    #[test]
    fn inspect_accepts_only_styx_plists() {
        let dir = tempfile::tempdir().unwrap();
        let layout = prefix_layout(&dir.path().join("styx"));
        files::create_private_dir(&layout.launch_agents).unwrap();
        std::fs::write(layout.plist("dev.styx.nomad"), b"").unwrap();

        assert_eq!(inspect(&layout).unwrap(), Existing::Setup);

        std::fs::write(layout.plist("com.example.other"), b"").unwrap();
        assert_eq!(
            inspect(&layout).unwrap(),
            Existing::Foreign {
                description: "a directory that contains LaunchAgents but no styx.toml".to_owned()
            }
        );
    }

    #[test]
    fn inspect_rejects_file_and_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();

        let file_result = inspect(&prefix_layout(&file)).unwrap();
        let link_result = inspect(&prefix_layout(&link)).unwrap();

        assert_eq!(
            file_result,
            Existing::Foreign {
                description: "a file".to_owned()
            }
        );
        assert_eq!(
            link_result,
            Existing::Foreign {
                description: format!("a symbolic link to {}", dir.path().display())
            }
        );
    }

    #[test]
    fn foreign_root_rejected_with_force() {
        let dir = tempfile::tempdir().unwrap();
        let layout = prefix_layout(dir.path());
        for name in ["a", "b", "c", "d", "e"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }

        let error = check_existing(&layout, true).unwrap_err();

        let message = error.to_string();
        assert!(
            message.contains("contains a, b, c and 2 more entries"),
            "{message}"
        );
        assert!(message.contains("choose another --prefix"), "{message}");
    }

    #[test]
    fn commit_never_moves_foreign_root() {
        let dir = tempfile::tempdir().unwrap();
        let layout = prefix_layout(&dir.path().join("styx"));
        let staging = Staging::create(&layout).unwrap();
        staging
            .write(&layout.state_file(), b"new", files::MODE_SECRET)
            .unwrap();
        // Appears after `check_existing` passed, while the setup was being staged.
        files::create_private_dir(&layout.root).unwrap();
        std::fs::write(layout.root.join("notes.txt"), b"mine").unwrap();

        let error = staging.commit(&NodeState::example_server()).unwrap_err();

        assert!(matches!(error, InstallError::NotStyx { .. }), "{error}");
        assert_eq!(entries(dir.path()), ["styx"]);
        assert_eq!(entries(&layout.root), ["notes.txt"]);
    }

    #[test]
    fn existing_setup_needs_force() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout {
            root: dir.path().join("styx"),
            launch_agents: dir.path().join("agents"),
        };
        files::create_private_dir(&layout.launch_agents).unwrap();
        std::fs::write(layout.plist("dev.styx.nomad"), b"").unwrap();

        let error = check_existing(&layout, false).unwrap_err();

        assert!(error.to_string().contains("pass --force"), "{error}");
        assert!(check_existing(&layout, true).unwrap());
    }
}

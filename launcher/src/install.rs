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
use crate::layout::Layout;
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
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{error}; {remains}")]
    Partial { error: FileError, remains: String },
}

/// Returns an error unless `layout` has no setup, or `force` allows replacing it.
///
/// A setup exists when the data root is a non-empty directory or a Styx plist is present.
pub fn check_existing(layout: &Layout, force: bool) -> Result<bool, InstallError> {
    let exists = !files::is_missing_or_empty(&layout.root) || !existing_plists(layout).is_empty();
    if exists && !force {
        return Err(InstallError::Exists {
            root: layout.root.clone(),
        });
    }
    Ok(exists)
}

fn existing_plists(layout: &Layout) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(&layout.launch_agents) else {
        return Vec::new();
    };
    let prefix = format!("{}.", launchd::LABEL_PREFIX);
    let mut plists: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(&prefix) && name.ends_with(".plist"))
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
                return Err(error.into());
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

    fn move_existing_aside(&self) -> Result<Option<PathBuf>, FileError> {
        let layout = &self.layout;
        let plists = existing_plists(layout);
        let root_used = !files::is_missing_or_empty(&layout.root);
        if !root_used && plists.is_empty() {
            return Ok(None);
        }

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

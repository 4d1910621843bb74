//! Atomic file writes with modes set at creation, private directories, and the backup
//! names used by `--force`.
//!
//! A file is written to a temporary file in its target directory, created with `O_EXCL`
//! and the final mode. The temporary file is synced and renamed over the target, then the
//! directory is synced. A reader sees either the old or the new content, never a partial
//! file.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of private keys, secrets and configs that contain a gossip key.
pub const MODE_SECRET: u32 = 0o600;
/// Mode of certificates and other files that hold nothing secret.
pub const MODE_PUBLIC: u32 = 0o644;
/// Mode of every directory Styx creates.
pub const MODE_DIR: u32 = 0o700;

/// Failure of a file system step, naming the path.
#[derive(Debug, thiserror::Error)]
#[error("failed to {action} {}", path.display())]
pub struct FileError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

fn file_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FileError {
    let path = path.to_owned();
    move |source| FileError {
        action,
        path,
        source,
    }
}

/// Creates `dir` and its missing parents with mode 0700.
///
/// Existing directories keep their mode, so a parent such as `~/Library` is never
/// changed.
pub fn create_private_dir(dir: &Path) -> Result<(), FileError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(MODE_DIR)
        .create(dir)
        .map_err(file_error("create directory", dir))
}

/// Writes `contents` to `path` atomically with `mode`.
///
/// # Errors
///
/// Any step fails; the temporary file is then removed and `path` is unchanged.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), FileError> {
    let dir = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));

    let result = write_temp(&temp, contents, mode).and_then(|()| {
        fs::rename(&temp, path).map_err(file_error("rename into place", path))?;
        sync_dir(dir)
    });
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

fn write_temp(temp: &Path, contents: &[u8], mode: u32) -> Result<(), FileError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(temp)
        .map_err(file_error("create", temp))?;

    // The umask may have removed bits from `mode`; set it exactly before any content
    // is written.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(file_error("set the mode of", temp))?;
    file.write_all(contents)
        .map_err(file_error("write", temp))?;
    file.sync_all().map_err(file_error("sync", temp))
}

/// Syncs a directory so that a rename inside it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<(), FileError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(file_error("sync directory", dir))
}

/// Returns a sibling of `path` named `<name>.<label>-<UTC timestamp>` that does not exist
/// yet, for backups and staging directories.
pub fn sibling_with_timestamp(path: &Path, label: &str) -> PathBuf {
    let now = time::OffsetDateTime::now_utc();
    let stamp = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "styx".to_owned());

    let mut candidate = path.with_file_name(format!("{name}.{label}-{stamp}"));
    let mut counter = 1;
    while candidate.exists() {
        candidate = path.with_file_name(format!("{name}.{label}-{stamp}-{counter}"));
        counter += 1;
    }
    candidate
}

/// Renames `from` to `to`, naming both paths on failure.
pub fn rename(from: &Path, to: &Path) -> Result<(), FileError> {
    fs::rename(from, to).map_err(|source| FileError {
        action: "rename",
        path: from.to_owned(),
        source: std::io::Error::new(source.kind(), format!("to {}: {source}", to.display())),
    })
}

/// Returns true when `dir` is missing or an empty directory.
pub fn is_missing_or_empty(dir: &Path) -> bool {
    match fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(error) => error.kind() == std::io::ErrorKind::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_sets_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");

        write_atomic(&path, b"first", MODE_SECRET).unwrap();
        write_atomic(&path, b"second", MODE_SECRET).unwrap();

        assert_eq!(fs::read(&path).unwrap(), b"second");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file may remain");
    }

    #[test]
    fn private_dir_has_mode_0700() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");

        create_private_dir(&nested).unwrap();

        let mode = fs::metadata(&nested).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}

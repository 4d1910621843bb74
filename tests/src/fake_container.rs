//! A minimal fake of Apple's `container` CLI for fingerprint tests.
//!
//! It is a shell script that handles `container --version` like CLI 1.2.2 and
//! `container system status` like a running or stopped system service, and fails
//! every other command. Creating the marker file `<script>.stopped` makes the service
//! read as stopped. It runs no containers; the full simulator is separate work.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Output of `container --version` for CLI 1.2.2.
pub const VERSION_OUTPUT: &str = "container CLI version 1.2.2 (build: release, commit: 0190097)";

/// What `container system status` prints on stdout when the service is down.
pub const NOT_RUNNING_OUTPUT: &str = "apiserver is not running and not registered with launchd";

const SCRIPT: &str = r#"#!/bin/sh
# Minimal fake of Apple's container CLI, written by styx-tests.
case "$1" in
--version)
    echo "@VERSION@"
    ;;
system)
    if [ "$2" != status ]; then
        echo "Error: unsupported by this fake: $*" >&2
        exit 64
    fi
    if [ -e "$0.stopped" ]; then
        echo "@NOT_RUNNING@"
        exit 1
    fi
    printf 'FIELD VALUE\nstatus running\n'
    ;;
*)
    echo "Error: unsupported by this fake: $*" >&2
    exit 64
    ;;
esac
"#;

/// The installed fake, at `<dir>/container`.
#[derive(Debug)]
pub struct FakeContainer {
    path: PathBuf,
}

impl FakeContainer {
    /// Writes the script into `dir` and makes it executable.
    pub fn install(dir: &Path) -> io::Result<Self> {
        let path = dir.join("container");
        let script = SCRIPT
            .replace("@VERSION@", VERSION_OUTPUT)
            .replace("@NOT_RUNNING@", NOT_RUNNING_OUTPUT);

        // Write to a temporary name and rename, so a probe never runs a half-written file.
        let staging = dir.join(".container.partial");
        fs::write(&staging, script)?;
        fs::set_permissions(&staging, fs::Permissions::from_mode(0o755))?;
        fs::rename(&staging, &path)?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes `container system status` report the service as stopped or running.
    pub fn set_system_running(&self, running: bool) -> io::Result<()> {
        let marker = self.marker();
        if running {
            match fs::remove_file(marker) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
                _ => Ok(()),
            }
        } else {
            fs::write(marker, b"")
        }
    }

    /// Deletes the script, as if the CLI were uninstalled.
    pub fn uninstall(&self) -> io::Result<()> {
        fs::remove_file(&self.path)
    }

    fn marker(&self) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(".stopped");
        PathBuf::from(name)
    }
}

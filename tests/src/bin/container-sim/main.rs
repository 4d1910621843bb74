//! `container-sim`: a simulator of Apple's `container` CLI for the driver's tests.
//!
//! It implements the commands the driver runs (`create`, `start [--attach]`, `stop`,
//! `kill`, `delete`, `inspect`, `list`, `stats`, `exec`, `logs`, `system status`,
//! `--version`) with the CLI's flags, JSON layouts, exit codes (1 for runtime errors,
//! 64 for usage errors) and `Error: ` texts. It lacks `run`, `image` and the other
//! commands the driver does not use. State lives in the directory named by
//! `CONTAINER_SIM_STATE`, so the driver's calls and a test's calls see the same
//! containers.
//!
//! Each running container is a real process of this binary ("image mode") listening on
//! its own loopback address 127.77.0.N, reported as `127.77.0.N/24`, which no other
//! simulator on the host hands out while the container runs. A detached monitor
//! process per container plays the part of Apple's runtime helper: it starts the image,
//! enforces the memory limit and records the exit status. It also kills the image when
//! the container's folder is removed, so a test that drops its state directory leaves
//! no process behind.
//!
//! Settings, all by environment:
//! - `CONTAINER_SIM_STATE`: state directory (required).
//! - `CONTAINER_SIM_LAYOUT`: JSON layout, `1.2` (default), `1.4`, `0.8` or `0.7`.
//! - `CONTAINER_SIM_STATS_DELAY_MS`: sampling delay of `stats`, 2000 by default as in
//!   the real CLI.
//!
//! NOTE: `exec` runs the command as a host process with the container's environment,
//! because a simulated container has no file system of its own.

mod commands;
mod images;
mod render;
mod store;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match commands::dispatch(&args) {
        Ok(code) => code,
        Err(failure) => failure.report(),
    }
}

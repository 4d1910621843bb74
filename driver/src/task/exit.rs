//! Supervisor start and exit detection for a task.
//!
//! The watcher polls the supervisor's exit file and PID. While the supervisor lives, its
//! exit file has the result. When the supervisor is gone without an exit file (killed,
//! or its host rebooted), the exit code cannot be known. The watcher then polls
//! `container inspect` until the container stops, reports exit code 0, and explains
//! that in a task event.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;

use super::{Exit, Task};
use crate::container::{ContainerCli, ContainerState};
use crate::handshake::MAGIC_COOKIE_KEY;
use crate::proto::drivers::{DriverTaskEvent, ExitResult};
use crate::supervisor::{self, SupervisorArgs};

/// How often the watcher reads the supervisor's files.
const FILE_POLL: Duration = Duration::from_millis(50);

/// How often the fallback polls `container inspect`.
const INSPECT_POLL: Duration = Duration::from_secs(1);

/// Exit status of a process killed by SIGKILL, as the CLI reports it (128 + 9).
const SIGKILL_STATUS: i32 = 137;

/// Share of the memory limit that the last sample must have reached for an exit by
/// SIGKILL to count as an OOM kill.
///
/// NOTE: the samples come from TaskStats, which Nomad requests for every running task.
/// Without a recent sample near the limit, an OOM kill reads as a plain SIGKILL.
const OOM_EVIDENCE_RATIO: f64 = 0.9;

/// Starts the supervisor in its own session and reaps it in the background.
pub fn spawn_supervisor(args: &SupervisorArgs) -> std::io::Result<()> {
    let program = std::env::current_exe()?;
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(args.state_dir.join(supervisor::LOG_FILE))?;
    let mut child = Command::new(program)
        .args(args.to_args())
        .env_remove(MAGIC_COOKIE_KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;

    // While this plugin lives it is the parent, so it must reap the supervisor. After a
    // plugin restart the supervisor's new parent reaps it.
    std::thread::spawn(move || child.wait());
    Ok(())
}

/// Builds the exit result of a recorded status.
pub fn exit_from_status(status: i32, last_memory: u64, memory_limit: u64) -> ExitResult {
    let signal = if (129..=159).contains(&status) {
        status - 128
    } else {
        0
    };
    let oom_killed = status == SIGKILL_STATUS
        && memory_limit > 0
        && last_memory as f64 >= memory_limit as f64 * OOM_EVIDENCE_RATIO;
    ExitResult {
        exit_code: status,
        signal,
        oom_killed,
    }
}

/// Watches `task` until it exits and publishes the exit.
pub async fn watch(task: Arc<Task>, cli: ContainerCli, events: broadcast::Sender<DriverTaskEvent>) {
    let exit = wait_for_exit(&task, &cli, &events).await;
    if exit.result.oom_killed {
        send_event(
            &events,
            &task,
            format!(
                "OOM killed: the container used its whole memory limit of {} MiB",
                task.state.memory_bytes >> 20
            ),
        );
    }
    tracing::info!(
        task_id = %task.id,
        container = %task.state.container,
        exit_code = exit.result.exit_code,
        oom_killed = exit.result.oom_killed,
        "task exited"
    );
    task.close_listeners();
    task.record_exit(exit);
}

async fn wait_for_exit(
    task: &Task,
    cli: &ContainerCli,
    events: &broadcast::Sender<DriverTaskEvent>,
) -> Exit {
    let dir = task.state.state_dir.as_path();
    loop {
        if let Some(exit) = recorded_exit(task, dir) {
            return exit;
        }
        let alive = supervisor::read_pid(dir).is_some_and(supervisor::process_alive);
        if !alive {
            // The supervisor may have written the file just before exiting.
            if let Some(exit) = recorded_exit(task, dir) {
                return exit;
            }
            break;
        }
        tokio::time::sleep(FILE_POLL).await;
    }

    let reason = format!(
        "the supervisor of container {} is not running, so the exit code is unknown and reported as 0",
        task.state.container
    );
    tracing::warn!(task_id = %task.id, container = %task.state.container, "task supervisor not running; polling inspect");
    send_event(events, task, reason.clone());
    loop {
        match cli.inspect(&task.state.container).await {
            Ok(Some(record)) if record.state == ContainerState::Running => {}
            Ok(_) => break,
            Err(error) => {
                tracing::debug!(task_id = %task.id, error = %error, "inspect failed while waiting for exit");
            }
        }
        tokio::time::sleep(INSPECT_POLL).await;
    }
    unknown_exit(reason)
}

fn recorded_exit(task: &Task, dir: &Path) -> Option<Exit> {
    let status = supervisor::read_exit_code(dir)?;
    Some(Exit {
        result: exit_from_status(status, task.last_memory(), task.state.memory_bytes),
        at: SystemTime::now(),
        unknown_reason: None,
    })
}

/// Builds the exit of a task whose exit code is unknown: code 0 and no signal, with
/// `reason`, which must not be empty, returned in WaitTask's `err`.
///
/// Nomad 2.0.6-dev counts such an exit as a failure. `handleWaitTask` in
/// `plugins/drivers/client.go` turns a non-empty `err` into the exit's error, and
/// `ExitResult.Successful` in `plugins/drivers/driver.go` is false for an exit with an
/// error. The restart tracker (`GetState` in
/// `client/allocrunner/taskrunner/restarts/restarts.go`) therefore applies the restart
/// policy to a batch task instead of letting it complete. A service task gets the
/// restart policy after every exit, successful or not.
pub fn unknown_exit(reason: String) -> Exit {
    debug_assert!(!reason.is_empty(), "an unknown exit needs a reason");
    Exit {
        result: ExitResult::default(),
        at: SystemTime::now(),
        unknown_reason: Some(reason),
    }
}

pub fn send_event(events: &broadcast::Sender<DriverTaskEvent>, task: &Task, message: String) {
    let event = DriverTaskEvent {
        task_id: task.id.clone(),
        alloc_id: task.config.alloc_id.clone(),
        task_name: task.config.name.clone(),
        timestamp: Some(SystemTime::now().into()),
        message,
        annotations: [("container".to_owned(), task.state.container.clone())].into(),
    };
    // No receiver means no TaskEvents stream is open; Nomad reopens it at once.
    let _ = events.send(event);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigkill_near_limit_is_oom() {
        let limit = 300 << 20;
        let result = exit_from_status(137, 290 << 20, limit);
        assert!(result.oom_killed);
        assert_eq!(result.signal, 9);
        assert_eq!(result.exit_code, 137);
    }

    #[test]
    fn sigkill_far_below_limit_is_not_oom() {
        let result = exit_from_status(137, 10 << 20, 300 << 20);
        assert!(!result.oom_killed);
        assert_eq!(result.signal, 9);
    }

    #[test]
    fn plain_exit_has_no_signal() {
        let result = exit_from_status(3, 0, 300 << 20);
        assert_eq!(
            result,
            ExitResult {
                exit_code: 3,
                signal: 0,
                oom_killed: false
            }
        );
    }
}

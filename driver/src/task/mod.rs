//! The task lifecycle: start, wait, stop, destroy, inspect, stats, signal, exec and
//! recovery of tasks run as Apple containers.
//!
//! A task is one container, one supervisor process (see [`crate::supervisor`]) and one
//! proxy listener per published port. The in-memory [`Task`] is rebuilt from the
//! handle's driver state after a plugin restart; the container and the supervisor never
//! depend on the plugin process.
//!
//! Layout:
//! - `error`: [`TaskError`] and its gRPC status.
//! - `spec`: the container name, resources, mounts and ports of a task.
//! - `state`: the driver state stored in Nomad's task handle.
//! - `publish`: proxy listeners for published ports.
//! - `exit`: starting the supervisor and watching for the exit.
//! - `exec`: interactive exec streams.
//! - `stats`: samples from `container stats` as Nomad's TaskStats.
//! - `lifecycle`: the operations behind each RPC.

mod error;
mod exec;
mod exit;
mod lifecycle;
mod publish;
mod spec;
mod state;
mod stats;

pub(crate) use error::error_chain;
pub use error::{TaskError, status_is_recoverable};
pub use lifecycle::{Context, Lifecycle, Started};
pub use spec::container_name;
pub use state::DriverState;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::watch;

use crate::metrics;
use crate::proto::drivers::{ExitResult, NetworkOverride, TaskConfig};
use publish::Publication;

/// One known task.
#[derive(Debug)]
pub struct Task {
    /// Nomad's task ID, `<alloc id>/<task name>/<random>`.
    pub id: String,
    pub config: TaskConfig,
    pub state: DriverState,
    pub network: NetworkOverride,
    exit: watch::Sender<Option<Exit>>,
    publication: Mutex<Option<Publication>>,
    /// Memory use in bytes of the latest stats sample, the evidence for an OOM kill.
    last_memory_bytes: AtomicU64,
    /// Whether the task counts in the running-tasks gauge (see [`Task::leave_running`]).
    counted_running: AtomicBool,
}

/// End of a task: its exit result and time.
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    pub result: ExitResult,
    pub at: SystemTime,
    /// Reason the exit code is unknown, or `None` when it is known.
    pub unknown_reason: Option<String>,
}

impl Task {
    pub fn exit(&self) -> Option<Exit> {
        self.exit.borrow().clone()
    }

    pub fn watch_exit(&self) -> watch::Receiver<Option<Exit>> {
        self.exit.subscribe()
    }

    fn record_memory(&self, bytes: u64) {
        self.last_memory_bytes.store(bytes, Ordering::Relaxed);
    }

    fn last_memory(&self) -> u64 {
        self.last_memory_bytes.load(Ordering::Relaxed)
    }

    /// Records the exit, counts it in the exit metrics and takes the task out of the
    /// running-tasks gauge. Only the first exit of a task counts.
    fn record_exit(&self, exit: Exit) {
        let result = exit_result(&exit);
        let first = self.exit.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(exit);
            true
        });
        if first {
            metrics::record_exit(result);
        }
        self.leave_running();
    }

    /// Takes the task out of the running-tasks gauge, once: at its exit, or when it is
    /// destroyed without a recorded exit.
    fn leave_running(&self) {
        if self.counted_running.swap(false, Ordering::Relaxed) {
            metrics::change_running(-1.0);
        }
    }

    /// Closes the task's listeners; later calls do nothing.
    fn close_listeners(&self) {
        let publication = self.publication.lock().expect("publication lock").take();
        if let Some(publication) = publication {
            publication.close();
        }
    }
}

/// Tasks of this plugin process, by Nomad task ID.
#[derive(Debug, Default)]
pub struct TaskRegistry {
    tasks: Mutex<HashMap<String, Arc<Task>>>,
}

impl TaskRegistry {
    pub fn get(&self, id: &str) -> Option<Arc<Task>> {
        self.tasks
            .lock()
            .expect("task registry lock")
            .get(id)
            .cloned()
    }

    fn insert(&self, task: Arc<Task>) {
        self.tasks
            .lock()
            .expect("task registry lock")
            .insert(task.id.clone(), task);
    }

    fn remove(&self, id: &str) -> Option<Arc<Task>> {
        self.tasks.lock().expect("task registry lock").remove(id)
    }

    pub fn len(&self) -> usize {
        self.tasks.lock().expect("task registry lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Returns the `result` label of an exit, one of [`metrics::EXIT_RESULTS`].
fn exit_result(exit: &Exit) -> &'static str {
    let result = &exit.result;
    if exit.unknown_reason.is_some() {
        "unknown"
    } else if result.oom_killed {
        "oom_killed"
    } else if result.signal != 0 {
        "signal"
    } else if result.exit_code == 0 {
        "exit_zero"
    } else {
        "exit_nonzero"
    }
}

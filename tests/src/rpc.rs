//! The task RPCs as the lifecycle tests send them: each call fails the test when the
//! driver returns an error status, and the calls that can block wait at most the time
//! given.
//!
//! StartTask is the exception that returns its status, because several tests expect
//! it to fail.

use std::path::Path;
use std::time::Duration;

use styx_driver::proto::drivers::{
    DestroyTaskRequest, StartTaskRequest, StartTaskResponse, StopTaskRequest,
    TaskConfigSchemaRequest, WaitTaskRequest, WaitTaskResponse,
};
use styx_driver::proto::hclspec::Spec;
use tonic::Status;

use crate::cty::{Value, encode_with_spec};
use crate::nomad::Plugin;
use crate::task::{PreparedTask, TaskSpec, prepare};

/// Returns the driver's task config schema.
///
/// # Panics
/// When TaskConfigSchema fails or returns no schema.
pub async fn task_config_schema(plugin: &Plugin) -> Spec {
    plugin
        .driver()
        .task_config_schema(TaskConfigSchemaRequest {})
        .await
        .expect("TaskConfigSchema succeeds")
        .into_inner()
        .spec
        .expect("the driver has a task config schema")
}

/// Prepares the task's folders and FIFOs under `root`, encodes `body` with the driver's
/// schema, and sends StartTask.
///
/// # Panics
/// When `body` does not fit the schema or StartTask does not return within `timeout`.
pub async fn start_task(
    plugin: &Plugin,
    root: &Path,
    spec: &TaskSpec,
    body: &Value,
    timeout: Duration,
) -> (PreparedTask, Result<StartTaskResponse, Status>) {
    let schema = task_config_schema(plugin).await;
    let config = encode_with_spec(&schema, body).expect("task config fits the schema");
    let prepared = prepare(root, spec, config);

    let request = StartTaskRequest {
        task: Some(prepared.config.clone()),
    };
    let response = tokio::time::timeout(timeout, plugin.driver().start_task(request))
        .await
        .expect("StartTask returns");
    (prepared, response.map(tonic::Response::into_inner))
}

/// Sends WaitTask and returns the exit.
///
/// # Panics
/// When WaitTask fails or the task does not exit within `timeout`.
pub async fn wait_task(plugin: &Plugin, id: &str, timeout: Duration) -> WaitTaskResponse {
    let request = WaitTaskRequest {
        task_id: id.to_owned(),
    };
    tokio::time::timeout(timeout, plugin.driver().wait_task(request))
        .await
        .expect("task exits")
        .expect("WaitTask succeeds")
        .into_inner()
}

/// Sends StopTask with the grace period `grace` and `signal` (empty for the default).
///
/// # Panics
/// When StopTask fails.
pub async fn stop_task(plugin: &Plugin, id: &str, grace: Duration, signal: &str) {
    let request = StopTaskRequest {
        task_id: id.to_owned(),
        timeout: Some(
            grace
                .try_into()
                .expect("grace period fits a protobuf duration"),
        ),
        signal: signal.to_owned(),
    };
    plugin
        .driver()
        .stop_task(request)
        .await
        .expect("StopTask succeeds");
}

/// Sends DestroyTask with `force`, as Nomad does when it gives up on a task.
///
/// # Panics
/// When DestroyTask fails.
pub async fn destroy_task(plugin: &Plugin, id: &str) {
    let request = DestroyTaskRequest {
        task_id: id.to_owned(),
        force: true,
    };
    plugin
        .driver()
        .destroy_task(request)
        .await
        .expect("DestroyTask succeeds");
}

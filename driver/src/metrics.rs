//! Metric names, label values and recording helpers of the driver itself.
//!
//! Names follow `styx_driver_<thing>_<unit>[_total]` with base units. Every label takes
//! its values from a closed set listed here, so a task ID, allocation ID or container
//! name never becomes a label value. [`register`] creates every series at 0, so
//! `rate()` has a series from the first scrape.
//!
//! The proxy listeners of published ports record `styx_proxy_*` metrics (see
//! `styx_proxy::metrics`) under a `listener` label. The driver names each listener with
//! [`listener_name`]: `<namespace>/<job>/<group>/<task>/<port label>`. That name
//! survives reschedules and restarts, so a job keeps its series as its allocations come
//! and go. The number of series is bounded by the jobs that ever ran on the node, not by
//! their allocations. Two allocations of one group on the same node add up in one
//! series. Series of stopped jobs stay until the plugin restarts, because an idle
//! timeout in the exporter would also drop the live listeners' pre-resolved handles.
//!
//! This module records only; [`crate::metrics_endpoint`] serves the page.

use std::time::Duration;

use metrics::Unit;

use crate::proto::drivers::TaskConfig;

/// Tasks of this plugin whose container runs, a gauge.
pub const TASKS_RUNNING: &str = "styx_driver_tasks_running";
/// StartTask calls, by `result` (see [`START_RESULTS`]).
pub const TASK_STARTS_TOTAL: &str = "styx_driver_task_starts_total";
/// Task exits seen by this plugin, by `result` (see [`EXIT_RESULTS`]).
pub const TASK_EXITS_TOTAL: &str = "styx_driver_task_exits_total";
/// `container` CLI runs, by `command` (see [`CLI_COMMANDS`]) and `result` (see
/// [`CLI_RESULTS`]).
pub const CONTAINER_CLI_CALLS_TOTAL: &str = "styx_driver_container_cli_calls_total";
/// Duration of `container` CLI runs in seconds, by `command`.
pub const CONTAINER_CLI_DURATION_SECONDS: &str = "styx_driver_container_cli_duration_seconds";
/// RecoverTask calls, by `result` (see [`RECOVERY_RESULTS`]).
pub const TASK_RECOVERIES_TOTAL: &str = "styx_driver_task_recoveries_total";

/// Buckets of [`CONTAINER_CLI_DURATION_SECONDS`], from 10 ms (an `inspect`) to 10 min
/// (the default image pull timeout of `create`).
pub const CLI_DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
];

/// Every `result` of [`TASK_STARTS_TOTAL`]: `started`, or the kind of failure.
pub const START_RESULTS: [&str; 11] = [
    "started",
    "invalid_config",
    "already_started",
    "name_taken",
    "image_missing",
    "cli_error",
    "not_started",
    "publish_failed",
    "no_bind_address",
    "state_error",
    "other",
];

/// Every `result` of [`TASK_EXITS_TOTAL`]. `exit_zero` and `exit_nonzero` are exits by
/// status, `signal` a kill by a signal other than an OOM kill, and `unknown` an exit
/// whose status was not recorded (reported to Nomad as 0).
pub const EXIT_RESULTS: [&str; 5] = [
    "exit_zero",
    "exit_nonzero",
    "signal",
    "oom_killed",
    "unknown",
];

/// Every `command` of the CLI metrics. `other` covers any subcommand not listed.
/// `start --attach` is missing because the task's supervisor process runs it, and
/// interactive `exec` streams are not counted.
pub const CLI_COMMANDS: [&str; 11] = [
    "create",
    "stop",
    "kill",
    "delete",
    "inspect",
    "list",
    "stats",
    "exec",
    "version",
    "system_status",
    "other",
];

/// Every `result` of [`CONTAINER_CLI_CALLS_TOTAL`]: the CLI exited 0, exited with
/// another status, ran past its time limit, or could not be started. For `exec`, the
/// status is that of the command run in the container.
pub const CLI_RESULTS: [&str; 4] = ["success", "failed", "timeout", "spawn_failed"];

/// Every `result` of [`TASK_RECOVERIES_TOTAL`]. `running` rebuilt a running task,
/// `restarted` started a stopped container again (`recover_stopped`), `exited`
/// registered a task that ended while the plugin was down, `known` found the task
/// already registered, and `failed` returned an error to Nomad.
pub const RECOVERY_RESULTS: [&str; 5] = ["running", "restarted", "exited", "known", "failed"];

/// Describes every driver metric and creates each series at 0. Called once, right after
/// the recorder is installed, because descriptions sent before that are lost.
pub fn register() {
    metrics::describe_gauge!(
        TASKS_RUNNING,
        Unit::Count,
        "Tasks of this plugin whose container runs."
    );
    metrics::describe_counter!(
        TASK_STARTS_TOTAL,
        Unit::Count,
        "StartTask calls, by result."
    );
    metrics::describe_counter!(
        TASK_EXITS_TOTAL,
        Unit::Count,
        "Task exits, by how the task ended."
    );
    metrics::describe_counter!(
        CONTAINER_CLI_CALLS_TOTAL,
        Unit::Count,
        "Runs of the container CLI, by subcommand and result."
    );
    metrics::describe_histogram!(
        CONTAINER_CLI_DURATION_SECONDS,
        Unit::Seconds,
        "Duration of container CLI runs, by subcommand."
    );
    metrics::describe_counter!(
        TASK_RECOVERIES_TOTAL,
        Unit::Count,
        "RecoverTask calls, by result."
    );

    metrics::gauge!(TASKS_RUNNING).increment(0.0);
    for result in START_RESULTS {
        metrics::counter!(TASK_STARTS_TOTAL, "result" => result).increment(0);
    }
    for result in EXIT_RESULTS {
        metrics::counter!(TASK_EXITS_TOTAL, "result" => result).increment(0);
    }
    for result in RECOVERY_RESULTS {
        metrics::counter!(TASK_RECOVERIES_TOTAL, "result" => result).increment(0);
    }
    for command in CLI_COMMANDS {
        for result in CLI_RESULTS {
            metrics::counter!(CONTAINER_CLI_CALLS_TOTAL, "command" => command, "result" => result)
                .increment(0);
        }
    }
}

/// Adds `change` (+1 or -1) to the running-tasks gauge.
pub fn change_running(change: f64) {
    metrics::gauge!(TASKS_RUNNING).increment(change);
}

/// Counts one StartTask call. `result` is one of [`START_RESULTS`].
pub fn record_start(result: &'static str) {
    debug_assert!(
        START_RESULTS.contains(&result),
        "unknown start result {result:?}"
    );
    metrics::counter!(TASK_STARTS_TOTAL, "result" => result).increment(1);
}

/// Counts one task exit. `result` is one of [`EXIT_RESULTS`].
pub fn record_exit(result: &'static str) {
    debug_assert!(
        EXIT_RESULTS.contains(&result),
        "unknown exit result {result:?}"
    );
    metrics::counter!(TASK_EXITS_TOTAL, "result" => result).increment(1);
}

/// Counts one RecoverTask call. `result` is one of [`RECOVERY_RESULTS`].
pub fn record_recovery(result: &'static str) {
    debug_assert!(
        RECOVERY_RESULTS.contains(&result),
        "unknown recovery result {result:?}"
    );
    metrics::counter!(TASK_RECOVERIES_TOTAL, "result" => result).increment(1);
}

/// Counts one CLI run that took `elapsed`. `command` comes from [`cli_command`], and
/// `result` is one of [`CLI_RESULTS`].
pub fn record_cli_call(command: &'static str, result: &'static str, elapsed: Duration) {
    metrics::counter!(CONTAINER_CLI_CALLS_TOTAL, "command" => command, "result" => result)
        .increment(1);
    metrics::histogram!(CONTAINER_CLI_DURATION_SECONDS, "command" => command)
        .record(elapsed.as_secs_f64());
}

/// Returns the `command` label of a CLI run from its argument vector: the subcommand,
/// `version` for `--version`, `system_status` for `system status`, else `other`.
pub fn cli_command<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> &'static str {
    let word = |index: usize| args.get(index).and_then(|arg| arg.as_ref().to_str());
    match (word(0), word(1)) {
        (Some("--version"), _) => "version",
        (Some("system"), Some("status")) => "system_status",
        (Some(first), _) => CLI_COMMANDS[..CLI_COMMANDS.len() - 1]
            .iter()
            .find(|command| **command == first)
            .copied()
            .unwrap_or("other"),
        (None, _) => "other",
    }
}

/// Returns the `listener` label of a task's published port:
/// `<namespace>/<job>/<group>/<task>/<port label>`.
///
/// A dispatched or periodic job's name carries a per-launch suffix
/// (`<parent>/dispatch-<time>-<id>`, `<parent>/periodic-<time>`), which is cut off so
/// that every launch of the parent shares its series. An empty namespace, as older
/// clients send, reads as `default`.
pub fn listener_name(config: &TaskConfig, port_label: &str) -> String {
    let namespace = if config.namespace.is_empty() {
        "default"
    } else {
        &config.namespace
    };
    let job = parent_job(&config.job_name);
    format!(
        "{namespace}/{job}/{}/{}/{port_label}",
        config.task_group_name, config.name
    )
}

/// Cuts the per-launch suffix off a dispatched or periodic child job's name.
fn parent_job(job: &str) -> &str {
    ["/dispatch-", "/periodic-"]
        .iter()
        .filter_map(|marker| job.rfind(marker))
        .max()
        .map_or(job, |cut| &job[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_command_labels() {
        let cases: [(&[&str], &str); 8] = [
            (&["create", "--name", "web"], "create"),
            (&["inspect", "web"], "inspect"),
            (&["--version"], "version"),
            (&["system", "status"], "system_status"),
            (&["system", "start"], "other"),
            (&["image", "pull", "nginx"], "other"),
            (&["other"], "other"),
            (&[], "other"),
        ];
        for (args, expected) in cases {
            assert_eq!(cli_command(args), expected, "{args:?}");
        }
    }

    #[test]
    fn listener_name_has_no_alloc_id() {
        let config = TaskConfig {
            id: "9f3c1a2b-0000-4000-8000-000000000001/web/1a2b3c4d".to_owned(),
            alloc_id: "9f3c1a2b-0000-4000-8000-000000000001".to_owned(),
            name: "web".to_owned(),
            task_group_name: "frontend".to_owned(),
            job_name: "shop".to_owned(),
            namespace: "prod".to_owned(),
            ..TaskConfig::default()
        };
        let name = listener_name(&config, "http");
        assert_eq!(name, "prod/shop/frontend/web/http");
        assert!(!name.contains(&config.alloc_id));
    }

    #[test]
    fn listener_name_cuts_launch_suffixes() {
        let cases = [
            ("batch/dispatch-1700000000-1a2b3c4d", "batch"),
            ("report/periodic-1700000000", "report"),
            ("plain", "plain"),
            ("team/dispatch-1/dispatch-2-abc", "team/dispatch-1"),
        ];
        for (job, expected) in cases {
            let config = TaskConfig {
                job_name: job.to_owned(),
                task_group_name: "g".to_owned(),
                name: "t".to_owned(),
                ..TaskConfig::default()
            };
            assert_eq!(
                listener_name(&config, "p"),
                format!("default/{expected}/g/t/p"),
                "{job}"
            );
        }
    }
}

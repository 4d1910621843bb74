//! Fidelity of `container-sim` to Apple's `container` CLI: exit codes, `Error:` texts,
//! and the JSON layouts of each CLI generation that the driver parses. It also checks
//! that `start --attach` ends when its container disappears before an exit is recorded.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use styx_tests::nomad::send_signal;
use styx_tests::sim::Simulator;

const SIMULATOR: &str = env!("CARGO_BIN_EXE_container-sim");

/// Limit that only stops a hung test. The commands it bounds end within milliseconds.
const HANG_LIMIT: Duration = Duration::from_secs(30);

fn simulator(dir: &tempfile::TempDir) -> Simulator {
    Simulator::new(Path::new(SIMULATOR), &dir.path().join("sim"))
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `args` with `CONTAINER_SIM_LAYOUT` set to `layout`.
fn run_with_layout(sim: &Simulator, layout: &str, args: &[&str]) -> Output {
    std::process::Command::new(sim.binary())
        .args(args)
        .envs(sim.env())
        .env("CONTAINER_SIM_LAYOUT", layout)
        .output()
        .unwrap()
}

#[test]
fn usage_errors_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(&dir);

    let output = sim.run(["create", "--bogus", "styx/echo"]);
    assert_eq!(output.status.code(), Some(64));
    assert!(stderr(&output).starts_with("Error: Unknown option '--bogus'"));
    assert!(stderr(&output).contains("Usage: container create"));

    let output = sim.run(["create", "--cpus", "0.5", "styx/echo"]);
    assert_eq!(output.status.code(), Some(64));
}

#[test]
fn runtime_errors_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(&dir);
    let cases: [(&[&str], &str); 5] = [
        (&["inspect", "ghost"], "Error: container not found: ghost"),
        (
            &["start", "ghost"],
            "Error: get failed: container ghost not found",
        ),
        (
            &["stats", "--no-stream", "--format", "json", "ghost"],
            "Error: no such container: ghost",
        ),
        (
            &["create", "--name", "web", "--memory", "512", "styx/echo"],
            "Error: minimum memory amount allowed is 200 MiB (got 512 bytes)",
        ),
        (
            &["create", "--name", "web", "-l", "a=b=c", "styx/echo"],
            "Error: invalid label format a=b=c",
        ),
    ];
    for (args, message) in cases {
        let output = sim.run(args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        assert_eq!(stderr(&output).trim_end(), message, "{args:?}");
    }
}

#[test]
fn stopped_service_gives_xpc_error() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(&dir);
    sim.set_system_running(false);

    let status = sim.run(["system", "status"]);
    assert_eq!(status.status.code(), Some(1));
    assert!(stdout(&status).contains("apiserver is not running"));

    let output = sim.run(["list", "--all", "--format", "json"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("XPC connection error: Connection invalid"));
    assert!(stderr(&output).contains("container system start"));
}

#[test]
fn inspect_uses_apple_pretty_format() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(&dir);
    let created = sim.run(["create", "--name", "web", "--memory", "256m", "styx/echo"]);
    assert_eq!(stdout(&created), "web\n");

    let text = stdout(&sim.run(["inspect", "web"]));
    assert!(text.contains("\"id\" : \"web\""), "{text}");
    assert!(text.contains("\"networks\" : [\n\n      ]"), "{text}");
    assert!(text.contains("docker.io\\/styx\\/echo:latest"), "{text}");
    assert!(text.contains("\"state\" : \"stopped\""), "{text}");

    let plain = stdout(&run_with_layout(&sim, "1.4", &["inspect", "web"]));
    assert!(plain.contains("docker.io/styx/echo:latest"), "{plain}");
}

#[test]
fn list_hides_stopped_without_all() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(&dir);
    sim.run(["create", "--name", "web", "--memory", "256m", "styx/echo"]);

    assert_eq!(stdout(&sim.run(["list", "--format", "json"])).trim(), "[]");
    let all = stdout(&sim.run(["list", "--all", "--format", "json"]));
    assert!(all.starts_with("[{\"configuration\":"), "{all}");
}

#[test]
fn legacy_layouts_have_old_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(&dir);
    sim.run(["create", "--name", "web", "--memory", "256m", "styx/echo"]);
    assert!(sim.run(["start", "web"]).status.success());

    let v08 = stdout(&run_with_layout(&sim, "0.8", &["inspect", "web"]));
    assert!(v08.contains("\"status\":\"running\""), "{v08}");
    assert!(v08.contains("\"ipv4Address\":\"127.77.0."), "{v08}");
    assert!(v08.contains("\"startedDate\":"), "{v08}");

    let v07 = stdout(&run_with_layout(&sim, "0.7", &["inspect", "web"]));
    assert!(v07.contains("\"address\":\"127.77.0."), "{v07}");
    assert!(!v07.contains("startedDate"), "{v07}");

    // Before 1.0, inspect of a missing ID printed what it found and succeeded.
    let missing = run_with_layout(&sim, "0.8", &["inspect", "ghost"]);
    assert!(missing.status.success());
    assert_eq!(stdout(&missing).trim(), "[]");

    assert!(sim.run(["delete", "--force", "web"]).status.success());
}

#[test]
fn stop_and_delete_echo_ids() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(&dir);
    sim.run(["create", "--name", "web", "--memory", "256m", "styx/echo"]);
    assert!(sim.run(["start", "web"]).status.success());

    let running = sim.run(["delete", "web"]);
    assert_eq!(running.status.code(), Some(1));
    assert!(stderr(&running).contains("is running and can not be deleted"));

    assert_eq!(stdout(&sim.run(["stop", "-t", "1", "web"])), "web\n");
    assert_eq!(
        stdout(&sim.run(["stop", "web"])),
        "web\n",
        "stopping twice succeeds"
    );
    assert_eq!(stdout(&sim.run(["delete", "web"])), "web\n");
    assert!(!sim.exists("web"));
}

#[test]
fn logs_tail_drops_blank_lines() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(&dir);
    sim.run([
        "create",
        "--name",
        "web",
        "--memory",
        "256m",
        "styx/exit",
        "0",
        "0",
    ]);
    let log = dir.path().join("sim/containers/web/stdout.log");
    assert!(sim.run(["start", "--attach", "web"]).status.success());
    std::fs::write(&log, "one\n\ntwo\n\n").unwrap();

    assert_eq!(stdout(&sim.run(["logs", "-n", "2", "web"])), "one\ntwo\n");
    assert_eq!(stdout(&sim.run(["logs", "web"])), "one\n\ntwo\n");
    let missing = sim.run(["logs", "ghost"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).starts_with("Error: failed to get logs for container ghost"));
}

/// Creates container `web` that writes `out N` and `err N` every 100 ms, starts it
/// with `start --attach`, and returns the attached CLI once its first line arrives.
/// That line shows the CLI is past starting and copies the container's output. A
/// thread keeps reading the CLI's stdout, so `Child::stdout` is `None`.
fn attach_chatter(sim: &Simulator) -> Child {
    let created = sim.run([
        "create",
        "--name",
        "web",
        "--memory",
        "256m",
        "styx/chatter",
        "100",
    ]);
    assert!(created.status.success(), "{}", stderr(&created));
    let mut attached = Command::new(sim.binary())
        .args(["start", "--attach", "web"])
        .envs(sim.env())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let (sender, lines) = mpsc::channel();
    let stdout = attached.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    match lines.recv_timeout(HANG_LIMIT) {
        Ok(line) => assert_eq!(line, "out 0"),
        Err(error) => {
            let _ = attached.kill();
            panic!("no output from start --attach: {error}");
        }
    }
    attached
}

/// Waits for `child` to exit and returns its output, or kills it and fails the test
/// after [`HANG_LIMIT`].
fn output_within_limit(mut child: Child) -> Output {
    let deadline = Instant::now() + HANG_LIMIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("the process did not exit within {HANG_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Waits until no process of `sim` is left, or fails the test with their PIDs.
fn assert_no_processes_left(sim: &Simulator) {
    let deadline = Instant::now() + HANG_LIMIT;
    loop {
        let left = sim.live_processes();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "processes left: {left:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn attach_ends_when_state_removed() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(&dir);
    let attached = attach_chatter(&sim);

    std::fs::remove_dir_all(sim.state()).unwrap();
    let output = output_within_limit(attached);

    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    // The container's own stderr lines come first.
    assert_eq!(
        stderr(&output).lines().last(),
        Some("Error: get failed: container web not found")
    );
    // The monitor ends the image once its folder is gone.
    assert_no_processes_left(&sim);
}

#[test]
fn attach_ends_when_container_folder_removed() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(&dir);
    let attached = attach_chatter(&sim);

    std::fs::remove_dir_all(sim.state().join("containers/web")).unwrap();
    let output = output_within_limit(attached);

    // Either the not-found error (1) or the status of the image that the monitor
    // killed (137), depending on which the attached CLI notices first.
    let code = output.status.code();
    assert!(
        matches!(code, Some(1 | 137)),
        "exit code {code:?}: {}",
        stderr(&output)
    );
    assert_no_processes_left(&sim);
}

#[test]
fn attach_ends_when_monitor_killed() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(&dir);
    let attached = attach_chatter(&sim);
    let container = sim.state().join("containers/web");
    let read_pid = |file: &str| -> u32 {
        let text = std::fs::read_to_string(container.join(file)).unwrap();
        text.trim().parse().unwrap()
    };

    send_signal(read_pid("running"), "-KILL").unwrap();
    let output = output_within_limit(attached);

    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert_eq!(
        stderr(&output).lines().last(),
        Some(
            "Error: internalError: \"the runtime helper of container web exited without recording its exit status\""
        )
    );
    let inspected = stdout(&sim.run(["inspect", "web"]));
    assert!(inspected.contains("\"state\" : \"stopped\""), "{inspected}");

    // Nothing watches the image once its monitor is gone.
    send_signal(read_pid("image.pid"), "-KILL").unwrap();
    assert_no_processes_left(&sim);
}

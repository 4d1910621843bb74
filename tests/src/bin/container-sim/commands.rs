//! The CLI commands, with the real CLI's flags, output, exit codes and error texts.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};
use serde_json::{Value, json};

use crate::images;
use crate::render::{self, Layout};
use crate::store::{ContainerConfig, Store, unix_now};

/// Exit code of a usage error (EX_USAGE), as swift-argument-parser returns it.
const EXIT_USAGE: u8 = 64;

const ENSURE_LINE: &str =
    "Ensure container system service has been started with `container system start`.";

/// Smallest memory limit the CLI accepts.
const MIN_MEMORY_BYTES: u64 = 200 * 1024 * 1024;
const DEFAULT_MEMORY_BYTES: u64 = 1024 * 1024 * 1024;
const DEFAULT_CPUS: u64 = 4;

/// How long `delete --force` and `kill -s KILL` wait for the container to stop.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// How long a started container's monitor may take to start the image process.
const IMAGE_START_WAIT: Duration = Duration::from_secs(10);

/// How often the monitor checks the image process and its memory.
const MONITOR_INTERVAL: Duration = Duration::from_millis(20);

/// A failed command: what to print and the exit code.
pub struct Failure {
    code: u8,
    stdout: String,
    stderr: String,
}

impl Failure {
    fn runtime(message: impl Into<String>) -> Self {
        Self {
            code: 1,
            stdout: String::new(),
            stderr: format!("Error: {}", message.into()),
        }
    }

    fn usage(message: impl Into<String>, subcommand: &str) -> Self {
        Self {
            code: EXIT_USAGE,
            stdout: String::new(),
            stderr: format!(
                "Error: {}\nUsage: container {subcommand} [<options>]\n  See 'container {subcommand} --help' for more information.",
                message.into()
            ),
        }
    }

    pub fn report(self) -> ExitCode {
        if !self.stdout.is_empty() {
            println!("{}", self.stdout);
        }
        if !self.stderr.is_empty() {
            eprintln!("{}", self.stderr);
        }
        ExitCode::from(self.code)
    }
}

impl From<io::Error> for Failure {
    fn from(error: io::Error) -> Self {
        Self::runtime(format!("internalError: \"{error}\""))
    }
}

type Outcome = Result<ExitCode, Failure>;

pub fn dispatch(args: &[String]) -> Outcome {
    let Some((command, rest)) = args.split_first() else {
        return Err(Failure::usage(
            "Missing expected argument '<subcommand>'",
            "",
        ));
    };
    match command.as_str() {
        "__image" => return run_image(rest),
        "--version" => {
            let version = Layout::from_env().version();
            println!("container CLI version {version} (build: release, commit: 0190097)");
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }

    let root = std::env::var_os("CONTAINER_SIM_STATE")
        .map(PathBuf::from)
        .ok_or_else(|| Failure::runtime("CONTAINER_SIM_STATE is not set"))?;
    let store = Store::open(root)?;
    if command == "__monitor" {
        return monitor(&store, rest);
    }
    if command == "system" {
        return system(&store, rest);
    }
    if store.system_stopped() {
        return Err(service_down(command));
    }

    match command.as_str() {
        "create" => create(&store, rest),
        "start" => start(&store, rest),
        "stop" => stop(&store, rest),
        "kill" => kill(&store, rest),
        "delete" | "rm" => delete(&store, rest),
        "inspect" => inspect(&store, rest),
        "list" | "ls" => list(&store, rest),
        "stats" => stats(&store, rest),
        "exec" => exec(&store, rest),
        "logs" => logs(&store, rest),
        other => Err(Failure::usage(format!("Unknown subcommand '{other}'"), "")),
    }
}

/// Returns the error each command prints while the apiserver is down.
fn service_down(command: &str) -> Failure {
    let xpc = "interrupted: \"XPC connection error: Connection invalid\"";
    let message = match command {
        "list" | "ls" | "inspect" => {
            format!("internalError: \"failed to list containers\" (cause: \"{xpc}\")")
        }
        "stop" | "kill" | "delete" | "rm" => {
            let verb = if command == "rm" { "delete" } else { command };
            format!("internalError: \"failed to {verb} container\" (cause: \"{xpc}\")")
        }
        _ => xpc.to_owned(),
    };
    Failure::runtime(format!("{message}\n{ENSURE_LINE}"))
}

fn system(store: &Store, args: &[String]) -> Outcome {
    match args.first().map(String::as_str) {
        Some("status") if store.system_stopped() => Err(Failure {
            code: 1,
            stdout: "apiserver is not running and not registered with launchd".into(),
            stderr: String::new(),
        }),
        Some("status") => {
            println!(
                "FIELD VALUE\nstatus running\nappRoot {}",
                store.root().display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Some("start") => {
            let _ = fs::remove_file(store.root().join("system-stopped"));
            Ok(ExitCode::SUCCESS)
        }
        _ => Err(Failure::usage(
            "Missing expected argument '<subcommand>'",
            "system",
        )),
    }
}

/// Splits `args` into flags with values, boolean flags and positionals. Parsing stops at
/// the first positional when `stop_at_positional` is set, as for the image of `create`
/// and the command of `exec`.
struct Parsed {
    values: Vec<(String, String)>,
    switches: Vec<String>,
    positionals: Vec<String>,
}

impl Parsed {
    fn value(&self, flag: &str) -> Option<&str> {
        self.values
            .iter()
            .rev()
            .find(|(name, _)| name == flag)
            .map(|(_, value)| value.as_str())
    }

    fn all(&self, flag: &str) -> impl Iterator<Item = &str> {
        self.values
            .iter()
            .filter(move |(name, _)| name == flag)
            .map(|(_, value)| value.as_str())
    }

    fn switch(&self, flag: &str) -> bool {
        self.switches.iter().any(|name| name == flag)
    }
}

/// Flag spellings: (aliases, canonical name, takes a value).
type FlagTable = &'static [(&'static [&'static str], &'static str, bool)];

fn parse(
    args: &[String],
    table: FlagTable,
    subcommand: &str,
    stop_at_positional: bool,
) -> Result<Parsed, Failure> {
    let mut parsed = Parsed {
        values: Vec::new(),
        switches: Vec::new(),
        positionals: Vec::new(),
    };
    let mut index = 0;
    while index < args.len() {
        let arg = &args[index];
        index += 1;
        if !arg.starts_with('-') || arg == "-" {
            parsed.positionals.push(arg.clone());
            if stop_at_positional {
                parsed.positionals.extend(args[index..].iter().cloned());
                break;
            }
            continue;
        }

        let Some((_, name, takes_value)) = table
            .iter()
            .find(|(aliases, _, _)| aliases.contains(&arg.as_str()))
        else {
            return Err(Failure::usage(
                format!("Unknown option '{arg}'"),
                subcommand,
            ));
        };
        if *takes_value {
            let Some(value) = args.get(index) else {
                return Err(Failure::usage(
                    format!(
                        "Missing value for '{arg} <{}>'",
                        name.trim_start_matches('-')
                    ),
                    subcommand,
                ));
            };
            index += 1;
            parsed.values.push(((*name).to_owned(), value.clone()));
        } else {
            parsed.switches.push((*name).to_owned());
        }
    }
    Ok(parsed)
}

const CREATE_FLAGS: FlagTable = &[
    (&["--name"], "--name", true),
    (&["-c", "--cpus"], "--cpus", true),
    (&["-m", "--memory"], "--memory", true),
    (&["-e", "--env"], "--env", true),
    (&["--env-file"], "--env-file", true),
    (&["-l", "--label"], "--label", true),
    (&["--mount"], "--mount", true),
    (&["-v", "--volume"], "--volume", true),
    (&["--entrypoint"], "--entrypoint", true),
    (&["-w", "--workdir", "--cwd"], "--workdir", true),
    (&["-u", "--user"], "--user", true),
    (&["--platform"], "--platform", true),
    (&["--dns"], "--dns", true),
    (&["--dns-search"], "--dns-search", true),
    (&["--dns-option"], "--dns-option", true),
    (&["--init"], "--init", false),
    (&["-d", "--detach"], "--detach", false),
];

fn create(store: &Store, args: &[String]) -> Outcome {
    let parsed = parse(args, CREATE_FLAGS, "create", true)?;
    let Some((image, command)) = parsed.positionals.split_first() else {
        return Err(Failure::usage(
            "Missing expected argument '<image>'",
            "create",
        ));
    };

    let id = parsed.value("--name").map_or_else(random_id, str::to_owned);
    validate_id(&id)?;
    let cpus = match parsed.value("--cpus") {
        None => DEFAULT_CPUS,
        Some(text) => text.parse().map_err(|_| {
            Failure::usage(
                format!("The value '{text}' is invalid for '--cpus <cpus>'"),
                "create",
            )
        })?,
    };
    let memory_bytes = match parsed.value("--memory") {
        None => DEFAULT_MEMORY_BYTES,
        Some(text) => parse_memory(text)?,
    };
    let env = read_env(&parsed)?;
    let labels = read_labels(&parsed)?;
    let mounts = read_mounts(&parsed)?;

    let Some((_, reference)) = images::lookup(image) else {
        let name = image.split(':').next().unwrap_or(image);
        return Err(Failure::runtime(format!(
            "HTTP request to https://registry-1.docker.io/v2/library/{name}/manifests/latest failed with response: 401 Unauthorized. Reason: requested access to the resource is denied"
        )));
    };
    let mut full_command = Vec::new();
    if let Some(entrypoint) = parsed.value("--entrypoint") {
        full_command.push(entrypoint.to_owned());
    }
    full_command.extend(command.iter().cloned());

    let _lock = store.lock()?;
    if store.exists(&id) {
        return Err(Failure::runtime(format!("container already exists: {id}")));
    }
    store.save_config(&ContainerConfig {
        id: id.clone(),
        image: reference,
        command: full_command,
        env,
        labels,
        mounts,
        cpus,
        memory_bytes,
        created: unix_now(),
    })?;
    println!("{id}");
    Ok(ExitCode::SUCCESS)
}

fn random_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    format!(
        "{:08x}-0000-4000-8000-{:012x}",
        std::process::id(),
        nanos % (1 << 48)
    )
}

fn validate_id(id: &str) -> Result<(), Failure> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok && (2..=63).contains(&id.len()) {
        Ok(())
    } else {
        Err(Failure::runtime(format!(
            "container ID {id} is not a valid container ID"
        )))
    }
}

/// Parses `512m`, `1g`, `1GiB` or a bare number of bytes, truncated to whole MiB.
fn parse_memory(text: &str) -> Result<u64, Failure> {
    let lower = text.to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (digits, unit) = lower.split_at(digits_end);
    let unit = unit.trim_end_matches("ib").trim_end_matches('b');
    let multiplier: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => {
            return Err(Failure::usage(
                format!("invalid memory size {text}"),
                "create",
            ));
        }
    };
    let number: u64 = digits
        .parse()
        .map_err(|_| Failure::usage(format!("invalid memory size {text}"), "create"))?;
    let bytes = number.saturating_mul(multiplier) / (1 << 20) * (1 << 20);
    if bytes < MIN_MEMORY_BYTES {
        return Err(Failure::runtime(format!(
            "minimum memory amount allowed is 200 MiB (got {} bytes)",
            number.saturating_mul(multiplier)
        )));
    }
    Ok(bytes)
}

/// Reads `--env-file` then `-e`, later values winning per key.
fn read_env(parsed: &Parsed) -> Result<Vec<String>, Failure> {
    let mut env: Vec<String> = Vec::new();
    let mut set = |entry: String| {
        let key = entry.split('=').next().unwrap_or_default().to_owned();
        env.retain(|existing| existing.split('=').next() != Some(key.as_str()));
        env.push(entry);
    };
    for path in parsed.all("--env-file") {
        let text = fs::read_to_string(path).map_err(|error| {
            Failure::runtime(format!("failed to read env file {path}: {error}"))
        })?;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.contains('=') {
                set(line.to_owned());
            } else if let Ok(value) = std::env::var(line) {
                set(format!("{line}={value}"));
            }
        }
    }
    for entry in parsed.all("--env") {
        if entry.contains('=') {
            set(entry.to_owned());
        } else if let Ok(value) = std::env::var(entry) {
            set(format!("{entry}={value}"));
        }
    }
    Ok(env)
}

fn read_labels(parsed: &Parsed) -> Result<Vec<(String, String)>, Failure> {
    let mut labels = Vec::new();
    for entry in parsed.all("--label") {
        let (key, value) = entry.split_once('=').unwrap_or((entry, ""));
        if value.contains('=') {
            return Err(Failure::runtime(format!("invalid label format {entry}")));
        }
        labels.push((key.to_owned(), value.to_owned()));
    }
    labels.sort();
    Ok(labels)
}

fn read_mounts(parsed: &Parsed) -> Result<Vec<Value>, Failure> {
    let mut mounts = Vec::new();
    for entry in parsed.all("--mount") {
        let mut kind = "bind";
        let (mut source, mut target, mut readonly) = ("", "", false);
        for part in entry.split(',') {
            match part.split_once('=') {
                Some(("type", value)) => kind = value,
                Some(("source" | "src", value)) => source = value,
                Some(("target" | "dst" | "destination", value)) => target = value,
                None if part == "readonly" || part == "ro" => readonly = true,
                _ => return Err(Failure::runtime(format!("invalid mount value: {entry}"))),
            }
        }
        if kind == "bind" && !Path::new(source).exists() {
            return Err(Failure::runtime(format!("path '{source}' does not exist")));
        }
        let options: Vec<&str> = if readonly { vec!["ro"] } else { Vec::new() };
        let filesystem = match kind {
            "tmpfs" => json!({"tmpfs": {}}),
            "volume" => json!({"volume": {"name": source, "format": "ext4"}}),
            _ => json!({"virtiofs": {}}),
        };
        mounts.push(json!({"destination": target, "options": options, "source": source, "type": filesystem}));
    }
    Ok(mounts)
}

fn single_id(parsed: &Parsed, subcommand: &str) -> Result<String, Failure> {
    parsed
        .positionals
        .first()
        .cloned()
        .ok_or_else(|| Failure::usage("Missing expected argument '<container-id>'", subcommand))
}

fn start(store: &Store, args: &[String]) -> Outcome {
    const FLAGS: FlagTable = &[
        (&["-a", "--attach"], "--attach", false),
        (&["-i", "--interactive"], "--interactive", false),
    ];
    let parsed = parse(args, FLAGS, "start", false)?;
    let id = single_id(&parsed, "start")?;
    let attach = parsed.switch("--attach");

    let monitor = {
        let _lock = store.lock()?;
        if !store.exists(&id) {
            return Err(Failure::runtime(format!(
                "get failed: container {id} not found"
            )));
        }
        if store.is_running(&id) {
            if attach {
                return Err(Failure::runtime(
                    "attach is currently unsupported on already running containers",
                ));
            }
            println!("{id}");
            return Ok(ExitCode::SUCCESS);
        }
        launch(store, &id)?
    };

    if attach {
        return follow(store, &id, monitor);
    }
    println!("{id}");
    Ok(ExitCode::SUCCESS)
}

/// Starts the monitor of `id` in its own session, so it outlives this CLI call, and
/// returns it. The caller holds the lock.
fn launch(store: &Store, id: &str) -> Result<Child, Failure> {
    let dir = store.dir(id);
    let (octet, claim) = store.allocate_ip()?;
    for file in ["exit", "image.pid"] {
        store.remove(id, file);
    }
    let _ = fs::remove_file(store.last_exit_path(id));
    File::create(dir.join("stdout.log"))?;
    File::create(dir.join("stderr.log"))?;
    store.write_number(id, "ip", i64::from(octet))?;
    store.write_number(id, "started", i64::try_from(unix_now()).unwrap_or(0))?;

    // The monitor, and the image after it, inherit the claim on the address, so it
    // lasts as long as the container runs and not just this CLI call.
    rustix::io::fcntl_setfd(&claim, rustix::io::FdFlags::empty()).map_err(io::Error::from)?;
    let mut monitor = Command::new(std::env::current_exe()?)
        .arg("__monitor")
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    drop(claim);
    store.write_number(id, "running", i64::from(monitor.id()))?;

    // The monitor reports once the image process exists, as `start` returns only after
    // the container's process has started. A monitor that exited without reporting,
    // as when its container's folder vanished, never reports.
    let deadline = Instant::now() + IMAGE_START_WAIT;
    while !dir.join("image.pid").exists() && !dir.join("exit").exists() {
        if !store.exists(id) {
            return Err(lost_container(id, true));
        }
        let monitor_exited = monitor.try_wait()?.is_some();
        if monitor_exited || Instant::now() >= deadline {
            return Err(Failure::runtime(format!(
                "internalError: \"container {id} did not start\""
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(monitor)
}

/// `start --attach`: copies the container's two streams to this process's stdout and
/// stderr until it exits, then exits with its status. It fails with exit code 1 once
/// no status can arrive any more: the container's folder was removed, or `monitor`
/// exited without recording one.
fn follow(store: &Store, id: &str, mut monitor: Child) -> Outcome {
    let dir = store.dir(id);
    let mut stdout = File::open(dir.join("stdout.log"))?;
    let mut stderr = File::open(dir.join("stderr.log"))?;
    let mut copy_output = || -> io::Result<usize> {
        Ok(copy_new(&mut stdout, &mut io::stdout())? + copy_new(&mut stderr, &mut io::stderr())?)
    };
    loop {
        let exited = read_last_exit(store, id);
        let copied = copy_output()?;
        if let Some(status) = exited {
            // Read once more after seeing the exit file, so the last lines are not lost.
            copy_output()?;
            return Ok(exit_code(status));
        }

        // Checked after the exit file, because a forced delete removes the folder right
        // after the monitor records the status of the process it killed.
        let vanished = !store.exists(id);
        let monitor_exited = monitor.try_wait()?.is_some();
        if vanished || monitor_exited {
            // The status may have been recorded since the read above.
            copy_output()?;
            if let Some(status) = read_last_exit(store, id) {
                return Ok(exit_code(status));
            }
            return Err(lost_container(id, vanished));
        }

        if copied == 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn read_last_exit(store: &Store, id: &str) -> Option<i64> {
    fs::read_to_string(store.last_exit_path(id))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn exit_code(status: i64) -> ExitCode {
    ExitCode::from(u8::try_from(status).unwrap_or(1))
}

/// Returns the error of a `start` whose container disappeared before its exit status
/// was recorded.
///
/// NOTE: what Apple's CLI prints here is not known. A removed container gets the text
/// of `start` on a missing container, and a monitor that died gets a message of the
/// simulator's own, both with exit code 1 as for any runtime error.
fn lost_container(id: &str, vanished: bool) -> Failure {
    if vanished {
        Failure::runtime(format!("get failed: container {id} not found"))
    } else {
        Failure::runtime(format!(
            "internalError: \"the runtime helper of container {id} exited without recording its exit status\""
        ))
    }
}

fn copy_new(source: &mut File, sink: &mut impl Write) -> io::Result<usize> {
    let mut buffer = Vec::new();
    source.read_to_end(&mut buffer)?;
    if !buffer.is_empty() {
        sink.write_all(&buffer)?;
        sink.flush()?;
    }
    Ok(buffer.len())
}

/// Runs the per-container monitor. It starts the image, enforces the memory limit, and
/// records the exit status as the shell does (128 + N for a signal).
fn monitor(store: &Store, args: &[String]) -> Outcome {
    let id = args.first().cloned().unwrap_or_default();
    // A new session keeps the container alive when the CLI call that started it ends.
    let _ = rustix::process::setsid();
    let config = store.config(&id)?;
    let dir = store.dir(&id);
    let octet = store.read_number(&id, "ip").unwrap_or(0);

    let (image, _) = images::lookup(&config.image).unwrap_or(("exit", String::new()));
    let spawned = Command::new(std::env::current_exe()?)
        .arg("__image")
        .arg(image)
        .args(&config.command)
        .env_clear()
        .envs(config.env.iter().filter_map(|entry| entry.split_once('=')))
        .env(images::IP_KEY, format!("127.77.0.{octet}"))
        .env(images::CONTAINER_KEY, &dir)
        .stdin(Stdio::null())
        .stdout(File::options().append(true).open(dir.join("stdout.log"))?)
        .stderr(File::options().append(true).open(dir.join("stderr.log"))?)
        .spawn();

    let status = match spawned {
        Ok(mut child) => {
            if store
                .write_number(&id, "image.pid", i64::from(child.id()))
                .is_err()
            {
                // Nothing can signal an image whose PID is not on record, so it ends now.
                let _ = child.kill();
            }
            watch(store, &id, &mut child, config.memory_bytes)?
        }
        Err(_) => 127,
    };

    // The file outside the container's folder goes first, because an attached `start`
    // reads it and the folder may be gone, which makes the second write fail.
    let last_exit_written =
        crate::store::write_atomic(&store.last_exit_path(&id), status.to_string());
    let exit_written = store.write_number(&id, "exit", i64::from(status));
    store.remove(&id, "ip");
    store.remove(&id, "running");
    last_exit_written.and(exit_written)?;
    Ok(ExitCode::SUCCESS)
}

/// Waits for the image process to exit and returns its status, killing it when it
/// exceeds `memory_limit` or when the container's folder is removed.
fn watch(store: &Store, id: &str, child: &mut Child, memory_limit: u64) -> io::Result<i32> {
    use std::os::unix::process::ExitStatusExt;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status
                .code()
                .or_else(|| status.signal().map(|signal| 128 + signal))
                .unwrap_or(1));
        }
        if rss_bytes(child.id()).is_some_and(|rss| rss > memory_limit) {
            // The guest's cgroup OOM killer ends the process with SIGKILL.
            let _ = child.kill();
        }
        if !store.exists(id) {
            // Once the folder is gone (a test dropped its state directory), no command
            // can stop the container any more, so it ends as a forced delete ends it.
            let _ = child.kill();
        }
        std::thread::sleep(MONITOR_INTERVAL);
    }
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Cumulative user and system CPU time of `pid` in microseconds, assuming the usual
/// 100 clock ticks per second.
fn cpu_usec(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some((user + system) * 10_000)
}

fn image_pid(store: &Store, id: &str) -> Option<Pid> {
    let pid = store.read_number(id, "image.pid")?;
    Pid::from_raw(i32::try_from(pid).ok()?)
}

/// Parses `SIGTERM`, `TERM`, `term` or `15`.
fn parse_signal(text: &str) -> Result<Signal, Failure> {
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let signal = match name {
        "HUP" | "1" => Signal::HUP,
        "INT" | "2" => Signal::INT,
        "QUIT" | "3" => Signal::QUIT,
        "KILL" | "9" => Signal::KILL,
        "USR1" | "10" => Signal::USR1,
        "USR2" | "12" => Signal::USR2,
        "TERM" | "15" => Signal::TERM,
        _ => return Err(Failure::runtime(format!("invalid signal {text}"))),
    };
    Ok(signal)
}

/// Sends `signal` to the image process of `id`. The container counts as running from
/// the moment its monitor is launched, so a signal can arrive before the monitor has
/// started the image. Such a signal is delivered once the image runs.
fn send(store: &Store, id: &str, signal: Signal) {
    let deadline = Instant::now() + IMAGE_START_WAIT;
    loop {
        if let Some(pid) = image_pid(store, id) {
            let _ = rustix::process::kill_process(pid, signal);
            return;
        }
        let starting = store.is_running(id) && !store.dir(id).join("exit").exists();
        if !starting || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn not_found_cause(verb: &str, id: &str) -> Failure {
    Failure::runtime(format!(
        "internalError: \"failed to {verb} container\" (cause: \"notFound: \"container with ID {id} not found\"\")"
    ))
}

fn stop(store: &Store, args: &[String]) -> Outcome {
    const FLAGS: FlagTable = &[
        (&["-t", "--time"], "--time", true),
        (&["-s", "--signal"], "--signal", true),
        (&["-a", "--all"], "--all", false),
    ];
    let parsed = parse(args, FLAGS, "stop", false)?;
    let seconds: u64 = match parsed.value("--time") {
        None => 5,
        Some(text) => text.parse().map_err(|_| {
            Failure::usage(
                format!("The value '{text}' is invalid for '-t <time>'"),
                "stop",
            )
        })?,
    };
    let signal = parse_signal(parsed.value("--signal").unwrap_or("SIGTERM"))?;
    if parsed.positionals.is_empty() {
        return Err(Failure::runtime(
            "no containers specified and --all not supplied",
        ));
    }

    for id in &parsed.positionals {
        if !store.exists(id) {
            return Err(not_found_cause("stop", id));
        }
        if store.is_running(id) {
            send(store, id, signal);
            if !store.wait_stopped(id, Duration::from_secs(seconds)) {
                send(store, id, Signal::KILL);
                store.wait_stopped(id, KILL_WAIT);
            }
        }
        println!("{id}");
    }
    Ok(ExitCode::SUCCESS)
}

fn kill(store: &Store, args: &[String]) -> Outcome {
    const FLAGS: FlagTable = &[
        (&["-s", "--signal"], "--signal", true),
        (&["-a", "--all"], "--all", false),
    ];
    let parsed = parse(args, FLAGS, "kill", false)?;
    let signal = parse_signal(parsed.value("--signal").unwrap_or("KILL"))?;
    if parsed.positionals.is_empty() {
        return Err(Failure::runtime(
            "no containers specified and --all not supplied",
        ));
    }

    for id in &parsed.positionals {
        if !store.exists(id) {
            return Err(not_found_cause("kill", id));
        }
        if !store.is_running(id) {
            return Err(Failure::runtime(
                "internalError: \"failed to kill container\" (cause: \"invalidState: \"no runtime client exists: container is stopped\"\")",
            ));
        }
        send(store, id, signal);
        if signal == Signal::KILL {
            store.wait_stopped(id, KILL_WAIT);
        }
        println!("{id}");
    }
    Ok(ExitCode::SUCCESS)
}

fn delete(store: &Store, args: &[String]) -> Outcome {
    const FLAGS: FlagTable = &[
        (&["-f", "--force"], "--force", false),
        (&["-a", "--all"], "--all", false),
    ];
    let parsed = parse(args, FLAGS, "delete", false)?;
    if parsed.positionals.is_empty() {
        return Err(Failure::runtime(
            "no containers specified and --all not supplied",
        ));
    }

    for id in &parsed.positionals {
        if !store.exists(id) {
            return Err(not_found_cause("delete", id));
        }
        if store.is_running(id) {
            if !parsed.switch("--force") {
                return Err(Failure::runtime(format!(
                    "internalError: \"failed to delete container\" (cause: \"invalidState: \"container {id} is running and can not be deleted\"\")"
                )));
            }
            send(store, id, Signal::KILL);
            store.wait_stopped(id, KILL_WAIT);
        }
        fs::remove_dir_all(store.dir(id))?;
        println!("{id}");
    }
    Ok(ExitCode::SUCCESS)
}

fn inspect(store: &Store, args: &[String]) -> Outcome {
    let parsed = parse(args, &[], "inspect", false)?;
    if parsed.positionals.is_empty() {
        return Err(Failure::usage(
            "Missing expected argument '<containers> ...'",
            "inspect",
        ));
    }
    let layout = Layout::from_env();

    let missing: Vec<&str> = parsed
        .positionals
        .iter()
        .filter(|id| !store.exists(id))
        .map(String::as_str)
        .collect();
    // 1.0 fails on a missing ID; earlier versions printed what they found.
    if !missing.is_empty() && matches!(layout, Layout::V1_2 | Layout::V1_4) {
        return Err(Failure::runtime(format!(
            "container not found: {}",
            missing.join(", ")
        )));
    }
    let mut records = Vec::new();
    for id in parsed.positionals.iter().filter(|id| store.exists(id)) {
        records.push(render::record(store, &store.config(id)?, layout));
    }
    println!("{}", render::inspect_output(&Value::Array(records), layout));
    Ok(ExitCode::SUCCESS)
}

fn list(store: &Store, args: &[String]) -> Outcome {
    const FLAGS: FlagTable = &[
        (&["-a", "--all"], "--all", false),
        (&["--format"], "--format", true),
        (&["-q", "--quiet"], "--quiet", false),
    ];
    let parsed = parse(args, FLAGS, "list", false)?;
    let layout = Layout::from_env();
    // Before 0.10, `--format json` listed every container even without --all.
    let all = parsed.switch("--all") || matches!(layout, Layout::V0_7);

    let mut records = Vec::new();
    for id in store.ids()? {
        if all || store.is_running(&id) {
            records.push(render::record(store, &store.config(&id)?, layout));
        }
    }
    match parsed.value("--format") {
        Some("json") => println!("{}", render::compact(&Value::Array(records), layout)),
        _ => {
            for record in records {
                println!(
                    "{}",
                    record["id"]
                        .as_str()
                        .or(record["configuration"]["id"].as_str())
                        .unwrap_or_default()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn stats(store: &Store, args: &[String]) -> Outcome {
    const FLAGS: FlagTable = &[
        (&["--format"], "--format", true),
        (&["--no-stream"], "--no-stream", false),
    ];
    let parsed = parse(args, FLAGS, "stats", false)?;
    for id in &parsed.positionals {
        if !store.exists(id) {
            return Err(Failure::runtime(format!("no such container: {id}")));
        }
    }

    // The real CLI samples twice, 2 s apart, and reports the second sample.
    let delay_ms = std::env::var("CONTAINER_SIM_STATS_DELAY_MS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(2000);
    std::thread::sleep(Duration::from_millis(delay_ms));

    let mut entries = Vec::new();
    for id in &parsed.positionals {
        let (Some(pid), true) = (image_pid(store, id), store.is_running(id)) else {
            continue;
        };
        let pid = u32::try_from(pid.as_raw_nonzero().get()).unwrap_or(0);
        let config = store.config(id)?;
        let mut entry = json!({
            "id": id,
            "memoryLimitBytes": config.memory_bytes,
            "networkRxBytes": 0,
            "networkTxBytes": 0,
            "blockReadBytes": 0,
            "blockWriteBytes": 0,
        });
        // As the real CLI does, fields the guest could not report are left out, here
        // when the process has just exited.
        if let (Some(cpu), Some(memory)) = (cpu_usec(pid), rss_bytes(pid)) {
            entry["cpuUsageUsec"] = cpu.into();
            entry["memoryUsageBytes"] = memory.into();
            entry["numProcesses"] = 1.into();
        }
        entries.push(entry);
    }
    println!(
        "{}",
        render::compact(&Value::Array(entries), Layout::from_env())
    );
    Ok(ExitCode::SUCCESS)
}

fn exec(store: &Store, args: &[String]) -> Outcome {
    const FLAGS: FlagTable = &[
        (&["-d", "--detach"], "--detach", false),
        (&["-e", "--env"], "--env", true),
        (&["-i", "--interactive"], "--interactive", false),
        (&["-t", "--tty"], "--tty", false),
    ];
    let parsed = parse(args, FLAGS, "exec", true)?;
    let Some((id, command)) = parsed.positionals.split_first() else {
        return Err(Failure::usage(
            "Missing expected argument '<container-id>'",
            "exec",
        ));
    };
    let Some((program, program_args)) = command.split_first() else {
        return Err(Failure::usage(
            "Missing expected argument '<arguments> ...'",
            "exec",
        ));
    };
    if !store.exists(id) {
        return Err(Failure::runtime(format!(
            "get failed: container {id} not found"
        )));
    }
    if !store.is_running(id) {
        return Err(Failure::runtime(format!("container {id} is not running")));
    }

    let config = store.config(id)?;
    let status = Command::new(program)
        .args(program_args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(config.env.iter().filter_map(|entry| entry.split_once('=')))
        .status()
        .map_err(|error| Failure::runtime(format!("failed to exec {program}: {error}")))?;
    let code = status.code().unwrap_or(1);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// `logs [-n N] <id>`: the container's output, stdout then stderr, because the simulator
/// keeps the streams apart where Apple's `stdio.log` interleaves them in write order.
/// With `-n` only the last N non-empty lines, as the real CLI drops blank ones.
fn logs(store: &Store, args: &[String]) -> Outcome {
    const FLAGS: FlagTable = &[
        (&["-n"], "-n", true),
        (&["-f", "--follow"], "--follow", false),
        (&["--boot"], "--boot", false),
    ];
    let parsed = parse(args, FLAGS, "logs", false)?;
    let id = single_id(&parsed, "logs")?;
    if !store.exists(&id) {
        return Err(Failure::runtime(format!(
            "failed to get logs for container {id} (cause: \"internalError: \"failed to open container logs: notFound: \"container with ID {id} not found\"\"\")"
        )));
    }

    let dir = store.dir(&id);
    let mut text = String::new();
    for file in ["stdout.log", "stderr.log"] {
        text.push_str(&fs::read_to_string(dir.join(file)).unwrap_or_default());
    }
    match parsed.value("-n") {
        Some(count) => {
            let count: usize = count.parse().map_err(|_| {
                Failure::usage(
                    format!("The value '{count}' is invalid for '-n <n>'"),
                    "logs",
                )
            })?;
            let lines: Vec<&str> = text
                .lines()
                .filter(|line| !line.trim().is_empty())
                .collect();
            for line in &lines[lines.len().saturating_sub(count)..] {
                println!("{line}");
            }
        }
        None => println!("{}", text.trim_end_matches('\n')),
    }
    Ok(ExitCode::SUCCESS)
}

fn run_image(args: &[String]) -> Outcome {
    let Some((image, rest)) = args.split_first() else {
        return Err(Failure::runtime("no image given"));
    };
    let code = images::run(image, rest).map_err(|error| Failure::runtime(error.to_string()))?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

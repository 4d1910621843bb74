//! Pure builders of `container` CLI argument vectors, one per operation.
//!
//! Flags always come before the image, because the CLI passes everything after the image
//! to the container's command unchanged.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// Everything `container create` needs for one task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateSpec {
    /// Container ID, which the CLI also uses as its name and hostname.
    pub name: String,
    pub image: String,
    pub cpus: u32,
    /// Memory limit in MiB; the CLI rejects less than 200.
    pub memory_mib: u64,
    /// File of `KEY=VALUE` lines with the task environment, kept off the command line
    /// because it may contain secrets that `ps` would show.
    pub env_file: Option<PathBuf>,
    /// Variables passed with `-e`, for values that an env file cannot hold (newlines).
    pub env: Vec<(String, String)>,
    pub labels: Vec<(String, String)>,
    pub mounts: Vec<MountArg>,
    pub entrypoint: Option<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub init: bool,
    /// `os/arch[/variant]`.
    pub platform: Option<String>,
    pub dns_servers: Vec<String>,
    pub dns_search_domains: Vec<String>,
    pub dns_options: Vec<String>,
    /// The container command: image command override and its arguments.
    pub command: Vec<String>,
}

/// One `--mount` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountArg {
    Bind {
        source: PathBuf,
        target: String,
        readonly: bool,
    },
    Volume {
        name: String,
        target: String,
        readonly: bool,
    },
    Tmpfs {
        target: String,
    },
}

impl MountArg {
    fn render(&self) -> String {
        match self {
            Self::Bind {
                source,
                target,
                readonly,
            } => with_readonly(
                format!("type=bind,source={},target={target}", source.display()),
                *readonly,
            ),
            Self::Volume {
                name,
                target,
                readonly,
            } => with_readonly(
                format!("type=volume,source={name},target={target}"),
                *readonly,
            ),
            Self::Tmpfs { target } => format!("type=tmpfs,target={target}"),
        }
    }
}

fn with_readonly(mut value: String, readonly: bool) -> String {
    if readonly {
        value.push_str(",readonly");
    }
    value
}

pub fn create_args(spec: &CreateSpec) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["create".into(), "--name".into(), (&spec.name).into()];
    args.extend(["--cpus".into(), spec.cpus.to_string().into()]);
    // A bare number means bytes to the CLI, so the unit is always explicit.
    args.extend(["--memory".into(), format!("{}m", spec.memory_mib).into()]);

    if let Some(path) = &spec.env_file {
        args.extend(["--env-file".into(), path.into()]);
    }
    for (key, value) in &spec.env {
        args.extend(["-e".into(), format!("{key}={value}").into()]);
    }
    for (key, value) in &spec.labels {
        args.extend(["-l".into(), format!("{key}={value}").into()]);
    }
    for mount in &spec.mounts {
        args.extend(["--mount".into(), mount.render().into()]);
    }

    let options = [
        ("--entrypoint", &spec.entrypoint),
        ("--workdir", &spec.workdir),
        ("--user", &spec.user),
        ("--platform", &spec.platform),
    ];
    for (flag, value) in options {
        if let Some(value) = value {
            args.extend([flag.into(), value.into()]);
        }
    }
    if spec.init {
        args.push("--init".into());
    }
    let repeated = [
        ("--dns", &spec.dns_servers),
        ("--dns-search", &spec.dns_search_domains),
        ("--dns-option", &spec.dns_options),
    ];
    for (flag, values) in repeated {
        for value in values {
            args.extend([flag.into(), value.into()]);
        }
    }

    args.push((&spec.image).into());
    args.extend(spec.command.iter().map(OsString::from));
    args
}

/// `container start --attach <id>`: runs in the foreground until the container's process
/// exits, and exits with its status.
pub fn start_attached_args(id: &str) -> Vec<OsString> {
    vec!["start".into(), "--attach".into(), id.into()]
}

/// `container stop`: sends `signal` (the image's stop signal when `None`), waits `timeout`
/// rounded up to whole seconds, then kills.
pub fn stop_args(id: &str, timeout: Duration, signal: Option<&str>) -> Vec<OsString> {
    let seconds = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
    let mut args: Vec<OsString> = vec!["stop".into(), "-t".into(), seconds.to_string().into()];
    if let Some(signal) = signal {
        args.extend(["-s".into(), signal.into()]);
    }
    args.push(id.into());
    args
}

pub fn kill_args(id: &str, signal: &str) -> Vec<OsString> {
    vec!["kill".into(), "-s".into(), signal.into(), id.into()]
}

pub fn delete_args(id: &str, force: bool) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["delete".into()];
    if force {
        args.push("--force".into());
    }
    args.push(id.into());
    args
}

pub fn inspect_args(id: &str) -> Vec<OsString> {
    vec!["inspect".into(), id.into()]
}

pub fn list_all_args() -> Vec<OsString> {
    vec![
        "list".into(),
        "--all".into(),
        "--format".into(),
        "json".into(),
    ]
}

pub fn stats_args(id: &str) -> Vec<OsString> {
    vec![
        "stats".into(),
        "--no-stream".into(),
        "--format".into(),
        "json".into(),
        id.into(),
    ]
}

pub fn exec_args(id: &str, command: &[String]) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["exec".into(), id.into()];
    args.extend(command.iter().map(OsString::from));
    args
}

/// `container exec -i [-t] <id> <command>`, with stdin kept open for streaming.
pub fn exec_interactive_args(id: &str, command: &[String], tty: bool) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["exec".into(), "--interactive".into()];
    if tty {
        args.push("--tty".into());
    }
    args.push(id.into());
    args.extend(command.iter().map(OsString::from));
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_puts_flags_before_image() {
        let spec = CreateSpec {
            name: "web-7f3c2a1b".into(),
            image: "nginx:alpine".into(),
            cpus: 2,
            memory_mib: 512,
            env_file: Some("/alloc/web/env".into()),
            env: vec![("MOTD".into(), "a\nb".into())],
            labels: vec![("styx.task".into(), "web".into())],
            mounts: vec![
                MountArg::Bind {
                    source: "/nomad/alloc/1/alloc".into(),
                    target: "/alloc".into(),
                    readonly: false,
                },
                MountArg::Bind {
                    source: "/nomad/alloc/1/web/secrets".into(),
                    target: "/secrets".into(),
                    readonly: true,
                },
                MountArg::Tmpfs {
                    target: "/run".into(),
                },
            ],
            entrypoint: Some("/bin/sh".into()),
            init: true,
            dns_servers: vec!["100.100.100.100".into()],
            command: vec!["-c".into(), "--cpus 9".into()],
            ..CreateSpec::default()
        };

        let expected = [
            "create",
            "--name",
            "web-7f3c2a1b",
            "--cpus",
            "2",
            "--memory",
            "512m",
            "--env-file",
            "/alloc/web/env",
            "-e",
            "MOTD=a\nb",
            "-l",
            "styx.task=web",
            "--mount",
            "type=bind,source=/nomad/alloc/1/alloc,target=/alloc",
            "--mount",
            "type=bind,source=/nomad/alloc/1/web/secrets,target=/secrets,readonly",
            "--mount",
            "type=tmpfs,target=/run",
            "--entrypoint",
            "/bin/sh",
            "--init",
            "--dns",
            "100.100.100.100",
            "nginx:alpine",
            "-c",
            "--cpus 9",
        ];
        assert_eq!(create_args(&spec), expected);
    }

    #[test]
    fn stop_rounds_timeout_up() {
        assert_eq!(
            stop_args("web", Duration::from_millis(2500), Some("SIGINT")),
            ["stop", "-t", "3", "-s", "SIGINT", "web"]
        );
        assert_eq!(
            stop_args("web", Duration::from_secs(5), None),
            ["stop", "-t", "5", "web"]
        );
    }

    #[test]
    fn argv_of_task_commands() {
        assert_eq!(start_attached_args("web"), ["start", "--attach", "web"]);
        assert_eq!(kill_args("web", "SIGHUP"), ["kill", "-s", "SIGHUP", "web"]);
        assert_eq!(delete_args("web", true), ["delete", "--force", "web"]);
        assert_eq!(delete_args("web", false), ["delete", "web"]);
        assert_eq!(inspect_args("web"), ["inspect", "web"]);
        assert_eq!(
            stats_args("web"),
            ["stats", "--no-stream", "--format", "json", "web"]
        );
        assert_eq!(
            exec_args("web", &["ls".into(), "-l".into()]),
            ["exec", "web", "ls", "-l"]
        );
        assert_eq!(
            exec_interactive_args("web", &["sh".into()], true),
            ["exec", "--interactive", "--tty", "web", "sh"]
        );
    }
}

//! The `styx-proxy bench` subcommand: options, validation, and the run that prints the
//! report.

use std::collections::{BTreeSet, HashSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;

use crate::backend::Backend;
pub use crate::error::BenchError;
use crate::proxy_child::{Engine, install_interrupt_handler, interrupted};
use crate::report::{DIRECT_PATH, Scenario};
use crate::runner::{Peer, Plan, Profile, run_plan};

/// File descriptors the bench process keeps beside its connections (runtime, files,
/// proxy readiness probes).
const SPARE_FILE_DESCRIPTORS: u64 = 1024;

/// Options of `styx-proxy bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Take one 1-second sample per path and scenario (under 30 s) instead of five.
    #[arg(long)]
    pub quick: bool,

    /// Samples per path and scenario, whose median is reported [default: 1 with --quick,
    /// else 5]. More rounds steady the figures on a busy machine.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: Option<u32>,

    /// Print the results as JSON instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Scenario to run; repeat the flag to run several. Default: all.
    #[arg(long = "scenario", value_name = "NAME", value_enum)]
    pub scenarios: Vec<Scenario>,

    /// Forwarding engines to measure, each as its own styx-proxy child.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "splice,copy")]
    pub engines: Vec<Engine>,

    /// A proxy already running that forwards ADDR to the --backend address; repeat the
    /// flag for several. NAME becomes its path name in the report.
    #[arg(long = "peer", value_name = "NAME=ADDR", value_parser = parse_peer)]
    pub peers: Vec<(String, SocketAddr)>,

    /// PID of a --peer process, for its CPU time and its idle-kib figure. Repeat the flag
    /// for a peer with several processes, such as nginx workers.
    #[arg(long = "peer-pid", value_name = "NAME=PID", value_parser = parse_peer_pid)]
    pub peer_pids: Vec<(String, u32)>,

    /// Address the bench backend listens on. Every path, peers included, must forward
    /// to it.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:19000")]
    pub backend: SocketAddr,

    /// Idle connections held open to measure idle-kib.
    #[arg(long, value_name = "N", default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
    pub idle_connections: u32,

    /// Concurrent clients of connect-rate.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub connect_clients: u32,
}

impl BenchArgs {
    /// Validates the options that depend on each other and builds the plan.
    ///
    /// # Errors
    /// Returns [`BenchError::InvalidArgument`] for a peer name that is reserved or used
    /// twice, and for a `--peer-pid` that names no peer or repeats a PID.
    pub fn to_plan(&self) -> Result<Plan, BenchError> {
        let mut peers: Vec<Peer> = Vec::new();
        for (name, addr) in &self.peers {
            validate_peer_name(name, &peers)?;
            peers.push(Peer {
                name: name.clone(),
                addr: *addr,
                pids: Vec::new(),
            });
        }

        for (name, pid) in &self.peer_pids {
            let invalid = |reason: &str| BenchError::InvalidArgument {
                flag: "--peer-pid",
                value: format!("{name}={pid}"),
                reason: reason.to_owned(),
            };
            let peer = peers
                .iter_mut()
                .find(|peer| &peer.name == name)
                .ok_or_else(|| invalid("no --peer has this name"))?;
            if peer.pids.contains(pid) {
                return Err(invalid("this PID is given twice"));
            }
            peer.pids.push(*pid);
        }

        let scenarios: BTreeSet<Scenario> = if self.scenarios.is_empty() {
            Scenario::ALL.into_iter().collect()
        } else {
            self.scenarios.iter().copied().collect()
        };
        let mut seen = HashSet::new();
        let engines = self
            .engines
            .iter()
            .copied()
            .filter(|engine| seen.insert(*engine))
            .collect();

        let mut profile = if self.quick {
            Profile::QUICK
        } else {
            Profile::STANDARD
        };
        if let Some(rounds) = self.rounds {
            profile.rounds = rounds as usize;
        }

        Ok(Plan {
            scenarios,
            engines,
            peers,
            profile,
            idle_connections: self.idle_connections as usize,
            connect_clients: self.connect_clients as usize,
        })
    }
}

fn validate_peer_name(name: &str, earlier: &[Peer]) -> Result<(), BenchError> {
    let reserved = [
        DIRECT_PATH,
        Engine::Splice.path_name(),
        Engine::Copy.path_name(),
    ];
    let reason = if reserved.contains(&name) {
        Some("the name is reserved for a built-in path")
    } else if earlier.iter().any(|peer| peer.name == name) {
        Some("another --peer has the same name")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(BenchError::InvalidArgument {
            flag: "--peer",
            value: name.to_owned(),
            reason: reason.to_owned(),
        }),
        None => Ok(()),
    }
}

/// Parses `NAME=ADDR`, such as `haproxy=127.0.0.1:19101`.
fn parse_peer(text: &str) -> Result<(String, SocketAddr), String> {
    let (name, addr) = split_name_value(text, "NAME=ADDR")?;
    let addr = addr.parse().map_err(|_| {
        format!("{addr:?} is not an IP address with a port, such as 127.0.0.1:19101")
    })?;
    Ok((name, addr))
}

/// Parses `NAME=PID`, such as `haproxy=4242`.
fn parse_peer_pid(text: &str) -> Result<(String, u32), String> {
    let (name, pid) = split_name_value(text, "NAME=PID")?;
    match pid.parse::<u32>() {
        Ok(pid) if pid > 0 => Ok((name, pid)),
        _ => Err(format!("{pid:?} is not a process ID")),
    }
}

fn split_name_value<'a>(text: &'a str, form: &str) -> Result<(String, &'a str), String> {
    let Some((name, value)) = text.split_once('=') else {
        return Err(format!("expected {form}"));
    };
    let valid_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid_name {
        return Err(format!(
            "the name {name:?} must be non-empty ASCII letters, digits, '-', '_' or '.'"
        ));
    }
    Ok((name.to_owned(), value))
}

/// Runs the benchmark, starting `proxy_exe run …` as the proxy under test, and prints the
/// report to stdout.
///
/// # Errors
/// Returns an error for invalid options, a backend address in use, a proxy child that does
/// not start, or a path that fails during a scenario. Proxy children are stopped in every
/// case, on Ctrl-C too.
pub fn run(args: BenchArgs, proxy_exe: &Path) -> Result<(), BenchError> {
    let plan = args.to_plan()?;
    raise_file_limit(plan.idle_connections as u64 * 2 + SPARE_FILE_DESCRIPTORS);
    install_interrupt_handler();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(BenchError::Runtime)?;
    let backend = {
        let _context = runtime.enter();
        Backend::start(args.backend)?
    };
    let load_before = load_average();

    let report = run_plan(&plan, proxy_exe, &backend, &runtime).map_err(|error| {
        // A child stopped by Ctrl-C makes a generator fail; report the cause instead.
        if interrupted() {
            BenchError::Interrupted
        } else {
            error
        }
    })?;

    let mut stdout = std::io::stdout().lock();
    let written = if args.json {
        writeln!(stdout, "{}", report.to_json())
    } else {
        writeln!(stdout, "{}", report.to_table())
            .and_then(|()| write_footer(&mut stdout, &plan, load_before))
    };
    match written.and_then(|()| stdout.flush()) {
        // A reader that stopped early (`| head`) is not a failed run.
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => result.map_err(BenchError::Output),
    }
}

fn write_footer(
    out: &mut impl Write,
    plan: &Plan,
    load_before: Option<String>,
) -> std::io::Result<()> {
    writeln!(
        out,
        "profile {}: median of {} round(s) of {:?} per path; proxy CPU in cores used during the window",
        plan.profile.name, plan.profile.rounds, plan.profile.window
    )?;
    if plan.profile.rounds == 1 {
        // One sample of the direct path can land a quarter below its usual figure, and
        // then a proxied path can even show above 1.00x.
        writeln!(
            out,
            "one sample per path: ratios can swing by a quarter from run to run; the default profile reports the median of five"
        )?;
    }
    if let (Some(before), Some(after)) = (load_before, load_average()) {
        writeln!(
            out,
            "load average (1, 5, 15 min) before: {before}; after: {after}"
        )?;
    }
    Ok(())
}

/// Reads the first three fields of `/proc/loadavg`, or returns `None` where it does not exist.
fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Raises the soft RLIMIT_NOFILE towards `needed`, up to the hard limit. Proxy children
/// inherit the raised limit. A limit that stays too low is logged, not fatal, because
/// only idle-kib needs that many descriptors.
fn raise_file_limit(needed: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

    let limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(u64::MAX);
    if current >= needed {
        return;
    }
    let target = limit.maximum.map_or(needed, |maximum| maximum.min(needed));
    let raised = Rlimit {
        current: Some(target),
        maximum: limit.maximum,
    };
    if let Err(error) = setrlimit(Resource::Nofile, raised) {
        tracing::warn!(%error, needed, current, "failed to raise the open file limit");
    } else if target < needed {
        tracing::warn!(
            needed,
            limit = target,
            "the hard open file limit is below what idle-kib needs"
        );
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Command {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
        let argv = std::iter::once("bench").chain(args.iter().copied());
        Command::try_parse_from(argv).map(|command| command.bench)
    }

    #[test]
    fn defaults_run_everything() {
        let args = parse(&[]).expect("no flags parse");
        let plan = args.to_plan().expect("defaults are valid");
        assert_eq!(plan.scenarios.len(), Scenario::ALL.len());
        assert_eq!(plan.engines, [Engine::Splice, Engine::Copy]);
        assert_eq!(plan.profile, Profile::STANDARD);
        assert_eq!(plan.idle_connections, 2000);
        assert_eq!(plan.connect_clients, 64);
        assert_eq!(args.backend, "127.0.0.1:19000".parse().unwrap());
    }

    #[test]
    fn single_sample_footer_warns() {
        let footer = |args: &[&str]| {
            let plan = parse(args).unwrap().to_plan().unwrap();
            let mut out = Vec::new();
            write_footer(&mut out, &plan, None).unwrap();
            String::from_utf8(out).unwrap()
        };

        assert!(footer(&["--quick"]).contains("one sample per path"));
        assert!(footer(&["--rounds", "1"]).contains("one sample per path"));
        assert!(!footer(&[]).contains("one sample per path"));
    }

    #[test]
    fn scenario_flag_repeats() {
        let args = parse(&["--quick", "--scenario", "bulk-8", "--scenario", "rr-p99"]).unwrap();
        let plan = args.to_plan().unwrap();
        let scenarios: Vec<Scenario> = plan.scenarios.into_iter().collect();
        assert_eq!(scenarios, [Scenario::Bulk8, Scenario::RrP99]);
        assert_eq!(plan.profile, Profile::QUICK);
    }

    #[test]
    fn rounds_override_profile() {
        let plan = parse(&["--quick", "--rounds", "5"])
            .unwrap()
            .to_plan()
            .unwrap();
        assert_eq!(plan.profile.rounds, 5);
        assert_eq!(plan.profile.window, Profile::QUICK.window);
        assert!(parse(&["--rounds", "0"]).is_err());
    }

    #[test]
    fn engines_comma_list() {
        let plan = parse(&["--engines", "copy"]).unwrap().to_plan().unwrap();
        assert_eq!(plan.engines, [Engine::Copy]);
        let plan = parse(&["--engines", "copy,splice,copy"])
            .unwrap()
            .to_plan()
            .unwrap();
        assert_eq!(plan.engines, [Engine::Copy, Engine::Splice]);
        assert!(parse(&["--engines", "sendfile"]).is_err());
    }

    #[test]
    fn peers_get_their_pids() {
        let args = parse(&[
            "--peer",
            "haproxy=127.0.0.1:19101",
            "--peer",
            "socat=127.0.0.1:19103",
            "--peer-pid",
            "haproxy=4242",
            "--peer-pid",
            "haproxy=4343",
        ])
        .unwrap();
        let plan = args.to_plan().unwrap();
        assert_eq!(plan.peers.len(), 2);
        assert_eq!(plan.peers[0].name, "haproxy");
        assert_eq!(plan.peers[0].addr, "127.0.0.1:19101".parse().unwrap());
        assert_eq!(plan.peers[0].pids, [4242, 4343]);
        assert!(plan.peers[1].pids.is_empty());
    }

    #[test]
    fn peer_syntax_errors_name_the_flag() {
        for bad in [
            "haproxy",
            "=127.0.0.1:1",
            "ha proxy=127.0.0.1:1",
            "haproxy=localhost",
        ] {
            let error = parse(&["--peer", bad]).expect_err(bad).to_string();
            assert!(error.contains("--peer"), "{bad}: {error}");
        }
        let error = parse(&["--peer-pid", "haproxy=0"])
            .expect_err("PID 0")
            .to_string();
        assert!(error.contains("not a process ID"), "{error}");
    }

    #[test]
    fn peer_reserved_or_duplicate_name() {
        let reserved = parse(&["--peer", "direct=127.0.0.1:1"]).unwrap().to_plan();
        assert!(matches!(
            reserved,
            Err(BenchError::InvalidArgument { flag: "--peer", .. })
        ));

        let duplicate = parse(&["--peer", "a=127.0.0.1:1", "--peer", "a=127.0.0.1:2"])
            .unwrap()
            .to_plan();
        let message = duplicate.expect_err("duplicate name").to_string();
        assert!(message.contains("same name"), "{message}");
    }

    #[test]
    fn peer_pid_without_peer() {
        let result = parse(&["--peer-pid", "nginx=77"]).unwrap().to_plan();
        let message = result.expect_err("no such peer").to_string();
        assert_eq!(
            message,
            r#"invalid --peer-pid value "nginx=77": no --peer has this name"#
        );
    }

    #[test]
    fn idle_connections_must_be_positive() {
        assert!(parse(&["--idle-connections", "0"]).is_err());
        assert!(parse(&["--connect-clients", "0"]).is_err());
    }
}

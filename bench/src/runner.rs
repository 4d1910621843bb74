//! The benchmark plan and its execution: which scenarios run on which paths, in which
//! order, and how repeated rounds become one figure.
//!
//! Scenarios run one group at a time (bulk-1, bulk-8, connect-rate, the request/response
//! pair, idle-kib). Each group starts fresh styx-proxy children, one per engine, so memory
//! and CPU figures do not carry over from an earlier group. Within a group every path runs
//! back to back in each round, and each round starts with a different path, so a noisy
//! neighbour that comes and goes does not bias one path. A figure is the median of its
//! rounds.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::runtime::Runtime;

use crate::backend::Backend;
use crate::bulk::{BulkLoad, run_bulk};
use crate::connect_rate::{ConnectLoad, run_connect_rate};
use crate::error::BenchError;
use crate::idle::run_idle;
use crate::process::CpuProbe;
use crate::proxy_child::{Engine, ProxyChild};
use crate::report::{DIRECT_PATH, Measurement, Report, Scenario};
use crate::request_response::{RequestLoad, run_request_response};

/// Durations and repetitions of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    /// Name shown under the table.
    pub name: &'static str,
    /// Measured window of each bulk, connection-rate and request/response sample.
    pub window: Duration,
    /// Load applied before each window opens.
    pub warmup: Duration,
    /// Samples per path and scenario; the figure is their median.
    pub rounds: usize,
}

impl Profile {
    /// The `--quick` profile: one 1-second sample per path.
    pub const QUICK: Profile = Profile {
        name: "quick",
        window: Duration::from_secs(1),
        warmup: Duration::from_millis(100),
        rounds: 1,
    };

    /// The default profile: the median of five 1-second samples per path. Short samples in
    /// more rounds interleave the paths more finely than long samples in few rounds.
    pub const STANDARD: Profile = Profile {
        name: "standard",
        window: Duration::from_secs(1),
        warmup: Duration::from_millis(200),
        rounds: 5,
    };
}

/// A proxy that runs outside the benchmark and forwards to the bench backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub addr: SocketAddr,
    /// Processes whose CPU time and memory count as the peer's, for example every nginx
    /// worker. A peer without any gets no CPU figure and no idle-kib figure.
    pub pids: Vec<u32>,
}

/// Scenarios, paths and load sizes of one run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub scenarios: BTreeSet<Scenario>,
    pub engines: Vec<Engine>,
    pub peers: Vec<Peer>,
    pub profile: Profile,
    /// Idle connections held open for idle-kib.
    pub idle_connections: usize,
    /// Concurrent clients of connect-rate.
    pub connect_clients: usize,
}

/// Scenarios that one load produces together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    Bulk { streams: usize },
    ConnectRate,
    RequestResponse,
    Idle,
}

impl Group {
    fn scenarios(self) -> &'static [Scenario] {
        match self {
            Group::Bulk { streams: 1 } => &[Scenario::Bulk1],
            Group::Bulk { .. } => &[Scenario::Bulk8],
            Group::ConnectRate => &[Scenario::ConnectRate],
            Group::RequestResponse => &[Scenario::RrP50, Scenario::RrP99],
            Group::Idle => &[Scenario::IdleKib],
        }
    }

    fn label(self) -> &'static str {
        match self {
            Group::Bulk { streams: 1 } => "bulk-1",
            Group::Bulk { .. } => "bulk-8",
            Group::ConnectRate => "connect-rate",
            Group::RequestResponse => "rr",
            Group::Idle => "idle-kib",
        }
    }
}

const GROUPS: [Group; 5] = [
    Group::Bulk { streams: 1 },
    Group::Bulk { streams: 8 },
    Group::ConnectRate,
    Group::RequestResponse,
    Group::Idle,
];

/// One path under test: where the generators connect and which processes to watch.
#[derive(Debug, Clone)]
struct Target {
    name: String,
    addr: SocketAddr,
    pids: Vec<u32>,
}

/// The figures of one path in one round.
#[derive(Debug, Clone)]
struct Sample {
    values: Vec<(Scenario, f64)>,
    cpu_cores: Option<f64>,
}

/// Executes `plan` against `backend`, starting `proxy_exe run` children for the engines.
///
/// `runtime` must be a multi-thread runtime and `backend` must run on it, because the
/// backend keeps serving while this thread blocks in a generator.
///
/// # Errors
/// Returns the first error of a proxy child or a generator; children started so far are
/// stopped before it returns.
pub fn run_plan(
    plan: &Plan,
    proxy_exe: &Path,
    backend: &Backend,
    runtime: &Runtime,
) -> Result<Report, BenchError> {
    let mut report = Report::default();
    for group in GROUPS {
        let selected: Vec<Scenario> = group
            .scenarios()
            .iter()
            .copied()
            .filter(|scenario| plan.scenarios.contains(scenario))
            .collect();
        if selected.is_empty() {
            continue;
        }

        tracing::info!(scenario = group.label(), "running scenario");
        let children = plan
            .engines
            .iter()
            .map(|&engine| ProxyChild::start(proxy_exe, engine, backend.local_addr()))
            .collect::<Result<Vec<_>, _>>()?;
        let targets = targets_for(group, plan, backend, &children);

        let samples = run_rounds(group, plan, &targets, backend, runtime)?;
        for child in children {
            child.stop()?;
        }

        for (target, target_samples) in targets.iter().zip(samples) {
            report
                .measurements
                .extend(summarize(&selected, &target.name, &target_samples));
        }
    }
    Ok(report)
}

fn targets_for(
    group: Group,
    plan: &Plan,
    backend: &Backend,
    children: &[ProxyChild],
) -> Vec<Target> {
    let mut targets = Vec::new();

    // The direct path has no proxy process, so it has no idle-kib figure.
    if group != Group::Idle {
        targets.push(Target {
            name: DIRECT_PATH.to_owned(),
            addr: backend.local_addr(),
            pids: Vec::new(),
        });
    }
    for (child, engine) in children.iter().zip(&plan.engines) {
        targets.push(Target {
            name: engine.path_name().to_owned(),
            addr: child.listen_addr(),
            pids: vec![child.pid()],
        });
    }
    for peer in &plan.peers {
        if group == Group::Idle && peer.pids.is_empty() {
            tracing::info!(peer = %peer.name, "skipping idle-kib for a peer without --peer-pid");
            continue;
        }
        targets.push(Target {
            name: peer.name.clone(),
            addr: peer.addr,
            pids: peer.pids.clone(),
        });
    }
    targets
}

/// Runs every round; returns the samples of each target, in the order of `targets`.
fn run_rounds(
    group: Group,
    plan: &Plan,
    targets: &[Target],
    backend: &Backend,
    runtime: &Runtime,
) -> Result<Vec<Vec<Sample>>, BenchError> {
    let rounds = if group == Group::Idle {
        1
    } else {
        plan.profile.rounds
    };
    let mut samples = vec![Vec::with_capacity(rounds); targets.len()];

    for round in 0..rounds {
        for offset in 0..targets.len() {
            let index = (round + offset) % targets.len();
            let target = &targets[index];
            let sample = run_sample(group, plan, target, backend, runtime).map_err(|source| {
                BenchError::Path {
                    scenario: group.label(),
                    path: target.name.clone(),
                    source: Box::new(source),
                }
            })?;
            tracing::debug!(scenario = group.label(), path = %target.name, round, ?sample, "sample done");
            samples[index].push(sample);
        }
    }
    Ok(samples)
}

fn run_sample(
    group: Group,
    plan: &Plan,
    target: &Target,
    backend: &Backend,
    runtime: &Runtime,
) -> Result<Sample, BenchError> {
    let profile = plan.profile;
    let mut probe = CpuProbe::new(target.pids.clone());

    let values = match group {
        Group::Bulk { streams } => {
            let load = BulkLoad {
                streams,
                warmup: profile.warmup,
                duration: profile.window,
            };
            let sample = run_bulk(target.addr, &load, backend.stats(), &mut probe)?;
            vec![(group.scenarios()[0], sample.gbit_per_second())]
        }
        Group::ConnectRate => {
            let load = ConnectLoad {
                clients: plan.connect_clients,
                warmup: profile.warmup,
                duration: profile.window,
            };
            let sample = runtime.block_on(run_connect_rate(target.addr, &load, &mut probe))?;
            if sample.failures > 0 {
                tracing::warn!(path = %target.name, failures = sample.failures, "connections failed during connect-rate");
            }
            vec![(Scenario::ConnectRate, sample.per_second())]
        }
        Group::RequestResponse => {
            let load = RequestLoad {
                warmup: profile.warmup,
                duration: profile.window,
            };
            let sample = run_request_response(target.addr, &load, &mut probe)?;
            vec![
                (Scenario::RrP50, sample.p50_micros),
                (Scenario::RrP99, sample.p99_micros),
            ]
        }
        Group::Idle => {
            let run = run_idle(
                target.addr,
                plan.idle_connections,
                &target.pids,
                backend.stats(),
            );
            let sample = runtime.block_on(run)?;
            vec![(Scenario::IdleKib, sample.kib_per_connection())]
        }
    };

    Ok(Sample {
        values,
        cpu_cores: probe.cores(),
    })
}

/// Turns the rounds of one target into one measurement per selected scenario.
fn summarize(selected: &[Scenario], path: &str, samples: &[Sample]) -> Vec<Measurement> {
    let cpu_rounds: Vec<f64> = samples
        .iter()
        .filter_map(|sample| sample.cpu_cores)
        .collect();
    let cpu_cores = median(cpu_rounds);

    selected
        .iter()
        .filter_map(|&scenario| {
            let rounds: Vec<f64> = samples
                .iter()
                .flat_map(|sample| &sample.values)
                .filter(|(of, _)| *of == scenario)
                .map(|(_, value)| *value)
                .collect();
            let value = median(rounds)?;
            Some(Measurement {
                scenario,
                path: path.to_owned(),
                value,
                cpu_cores,
            })
        })
        .collect()
}

/// Median of `values`; the mean of the middle two for an even count.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        Some(values[middle])
    } else {
        Some((values[middle - 1] + values[middle]) / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(Vec::new()), None);
    }

    #[test]
    fn summarize_keeps_selected_scenarios() {
        let samples = vec![
            Sample {
                values: vec![(Scenario::RrP50, 10.0), (Scenario::RrP99, 30.0)],
                cpu_cores: Some(0.2),
            },
            Sample {
                values: vec![(Scenario::RrP50, 12.0), (Scenario::RrP99, 50.0)],
                cpu_cores: Some(0.4),
            },
            Sample {
                values: vec![(Scenario::RrP50, 11.0), (Scenario::RrP99, 40.0)],
                cpu_cores: Some(0.3),
            },
        ];
        let measurements = summarize(&[Scenario::RrP99], "styx-copy", &samples);
        assert_eq!(measurements.len(), 1);
        assert_eq!(measurements[0].scenario, Scenario::RrP99);
        assert_eq!(measurements[0].path, "styx-copy");
        assert_eq!(measurements[0].value, 40.0);
        assert_eq!(measurements[0].cpu_cores, Some(0.3));
    }

    #[test]
    fn groups_cover_every_scenario_once() {
        let covered: Vec<Scenario> = GROUPS
            .iter()
            .flat_map(|group| group.scenarios())
            .copied()
            .collect();
        assert_eq!(covered, Scenario::ALL);
    }
}

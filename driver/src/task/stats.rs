//! Task statistics from `container stats`, converted to Nomad's TaskStats.
//!
//! The CLI reports cumulative CPU time, so the CPU percentage is the change between two
//! samples divided by the wall time between them. Every message sets the timestamp and
//! the aggregate usage, because Nomad's client dereferences both without a check.

use std::time::{Instant, SystemTime};

use crate::container::ContainerStats;
use crate::node::NodeCompute;
use crate::proto::drivers::{
    CpuUsage, MemoryUsage, TaskResourceUsage, TaskStats, cpu_usage, memory_usage,
};

/// The previous sample, for CPU rates.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    pub usage_usec: u64,
    pub at: Instant,
}

/// Converts one sample; `previous` is `None` for the first, whose CPU percentage is 0.
pub fn task_stats(
    id: &str,
    sample: &ContainerStats,
    now: Instant,
    previous: Option<CpuSample>,
    compute: Option<NodeCompute>,
) -> TaskStats {
    let percent = match (previous, sample.cpu_usage_usec) {
        (Some(previous), Some(usage)) if now > previous.at => {
            let used = usage.saturating_sub(previous.usage_usec) as f64;
            let wall = now.duration_since(previous.at).as_micros() as f64;
            used / wall * 100.0
        }
        _ => 0.0,
    };
    // Nomad's "MHz used": the share of one core times the speed of one core.
    let core_mhz = compute
        .filter(|compute| compute.cores > 0)
        .map_or(0.0, |compute| {
            compute.total_mhz as f64 / compute.cores as f64
        });

    let memory = sample.memory_usage_bytes.unwrap_or(0);
    let usage = TaskResourceUsage {
        cpu: Some(CpuUsage {
            percent,
            total_ticks: percent / 100.0 * core_mhz,
            measured_fields: vec![
                cpu_usage::Fields::Percent as i32,
                cpu_usage::Fields::TotalTicks as i32,
            ],
            ..CpuUsage::default()
        }),
        memory: Some(MemoryUsage {
            rss: memory,
            usage: memory,
            measured_fields: vec![
                memory_usage::Fields::Rss as i32,
                memory_usage::Fields::Usage as i32,
            ],
            ..MemoryUsage::default()
        }),
    };

    TaskStats {
        id: id.to_owned(),
        timestamp: Some(SystemTime::now().into()),
        agg_resource_usage: Some(usage),
        resource_usage_by_pid: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn cpu_percent_from_two_samples() {
        let start = Instant::now();
        let previous = CpuSample {
            usage_usec: 1_000_000,
            at: start,
        };
        let sample = ContainerStats {
            id: "web".into(),
            cpu_usage_usec: Some(1_500_000),
            memory_usage_bytes: Some(64 << 20),
            ..ContainerStats::default()
        };
        let compute = Some(NodeCompute {
            total_mhz: 8000,
            cores: 4,
        });
        let stats = task_stats(
            "t",
            &sample,
            start + Duration::from_secs(1),
            Some(previous),
            compute,
        );

        let usage = stats.agg_resource_usage.unwrap();
        let cpu = usage.cpu.unwrap();
        assert!((cpu.percent - 50.0).abs() < 0.01, "{}", cpu.percent);
        assert!(
            (cpu.total_ticks - 1000.0).abs() < 0.1,
            "{}",
            cpu.total_ticks
        );
        assert_eq!(usage.memory.unwrap().rss, 64 << 20);
        assert!(stats.timestamp.is_some());
    }

    #[test]
    fn first_sample_has_zero_cpu() {
        let stats = task_stats("t", &ContainerStats::default(), Instant::now(), None, None);
        let usage = stats.agg_resource_usage.unwrap();
        assert_eq!(usage.cpu.unwrap().percent, 0.0);
        assert_eq!(usage.memory.unwrap().usage, 0);
    }
}

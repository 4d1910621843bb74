//! CPU time and resident memory of other processes, and the CPU probe the generators
//! open and close around their measurement window.
//!
//! On Linux both come from `/proc/PID/stat` and `/proc/PID/status`. Elsewhere (macOS) they
//! come from `ps -o cputime=` and `ps -o rss=`.
//!
//! NOTE: the `ps` path has been neither built nor run on macOS yet; only its parser is
//! tested, on Linux.

use std::io;
use std::time::Instant;

use crate::error::BenchError;

/// User plus system CPU time of process `pid` and all its threads, in seconds. Child
/// processes do not count, so a peer that forks per connection (socat) has no CPU figure.
///
/// # Errors
/// Returns [`BenchError::ProcessStats`] when the process does not exist or its stats do
/// not parse.
pub fn cpu_seconds(pid: u32) -> Result<f64, BenchError> {
    read_cpu_seconds(pid).map_err(|source| BenchError::ProcessStats { pid, source })
}

/// Resident set size of process `pid` in KiB.
///
/// # Errors
/// Returns [`BenchError::ProcessStats`] when the process does not exist or its stats do
/// not parse.
pub fn rss_kib(pid: u32) -> Result<u64, BenchError> {
    read_rss_kib(pid).map_err(|source| BenchError::ProcessStats { pid, source })
}

#[cfg(target_os = "linux")]
fn read_cpu_seconds(pid: u32) -> io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = parse_stat_cpu_ticks(&stat).ok_or_else(|| invalid_data("/proc/PID/stat"))?;
    Ok(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
}

#[cfg(target_os = "linux")]
fn read_rss_kib(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status_rss_kib(&status).ok_or_else(|| invalid_data("/proc/PID/status"))
}

#[cfg(not(target_os = "linux"))]
fn read_cpu_seconds(pid: u32) -> io::Result<f64> {
    let output = ps_field(pid, "cputime=")?;
    parse_cputime_seconds(&output).ok_or_else(|| invalid_data("ps -o cputime="))
}

#[cfg(not(target_os = "linux"))]
fn read_rss_kib(pid: u32) -> io::Result<u64> {
    let output = ps_field(pid, "rss=")?;
    output
        .trim()
        .parse()
        .map_err(|_| invalid_data("ps -o rss="))
}

#[cfg(not(target_os = "linux"))]
fn ps_field(pid: u32, field: &str) -> io::Result<String> {
    let output = std::process::Command::new("ps")
        .args(["-o", field, "-p", &pid.to_string()])
        .output()?;
    if !output.status.success() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "ps found no such process",
        ));
    }
    String::from_utf8(output.stdout).map_err(|_| invalid_data("ps output"))
}

fn invalid_data(source: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{source} has an unexpected format"),
    )
}

/// Sums utime and stime (fields 14 and 15, in clock ticks) of a `/proc/PID/stat` line.
/// The fields are counted after the last `)`, because the command name in field 2 may
/// contain spaces and parentheses.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];

    // `after_name` starts at field 3 (state), so utime is its 12th field.
    let fields: Vec<u64> = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    (fields.len() == 2).then(|| fields.iter().sum())
}

/// Reads `VmRSS` (in kB, which the kernel means as KiB) from `/proc/PID/status`.
pub fn parse_status_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let value = words.next()?.parse().ok()?;
    (words.next()? == "kB").then_some(value)
}

/// Parses the `ps` CPU time format `[[DD-]HH:]MM:SS[.ff]` into seconds.
pub fn parse_cputime_seconds(text: &str) -> Option<f64> {
    let text = text.trim();
    let (days, clock) = match text.split_once('-') {
        Some((days, clock)) => (days.parse::<f64>().ok()?, clock),
        None => (0.0, text),
    };

    let mut seconds = 0.0;
    for part in clock.split(':') {
        seconds = seconds * 60.0 + part.parse::<f64>().ok()?;
    }
    Some(days * 86_400.0 + seconds)
}

/// Measures the CPU cores a set of processes used during one measurement window.
///
/// A generator calls [`CpuProbe::begin`] when its window opens and [`CpuProbe::end`] when
/// it closes. With no processes (the direct path) the probe measures nothing.
#[derive(Debug, Default)]
pub struct CpuProbe {
    pids: Vec<u32>,
    start: Option<(Instant, f64)>,
    cores: Option<f64>,
}

impl CpuProbe {
    /// Probe over the processes `pids`; empty for a path without a proxy process to watch.
    pub fn new(pids: Vec<u32>) -> CpuProbe {
        CpuProbe {
            pids,
            ..CpuProbe::default()
        }
    }

    /// Opens the window.
    ///
    /// # Errors
    /// Returns [`BenchError::ProcessStats`] when a process is gone.
    pub fn begin(&mut self) -> Result<(), BenchError> {
        if self.pids.is_empty() {
            return Ok(());
        }
        self.start = Some((Instant::now(), self.total_cpu_seconds()?));
        Ok(())
    }

    /// Closes the window and stores the average cores used in it.
    ///
    /// # Errors
    /// Returns [`BenchError::ProcessStats`] when a process is gone.
    pub fn end(&mut self) -> Result<(), BenchError> {
        let Some((started, cpu_at_start)) = self.start.take() else {
            return Ok(());
        };
        let cpu_used = self.total_cpu_seconds()? - cpu_at_start;
        let wall = started.elapsed().as_secs_f64();
        if wall > 0.0 {
            self.cores = Some(cpu_used / wall);
        }
        Ok(())
    }

    /// Average cores used in the last closed window, or `None` without processes.
    pub fn cores(&self) -> Option<f64> {
        self.cores
    }

    fn total_cpu_seconds(&self) -> Result<f64, BenchError> {
        self.pids.iter().map(|&pid| cpu_seconds(pid)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_ticks_sums_utime_and_stime() {
        let stat = "4242 (styx-proxy) S 1 4242 4242 0 -1 4194560 1500 0 0 0 \
                    731 269 40 60 20 0 3 0 12345 1000000 500 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(1000));
    }

    #[test]
    fn stat_cpu_ticks_name_with_parens() {
        let stat = "7 (a) b) (c) R 1 7 7 0 -1 0 0 0 0 0 5 6 1 2 20 0 1 0 1 1 1";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(11));
    }

    #[test]
    fn stat_cpu_ticks_truncated_is_none() {
        assert_eq!(parse_stat_cpu_ticks("7 (a) R 1 7"), None);
    }

    #[test]
    fn status_rss_reads_vmrss() {
        let status = "Name:\tstyx-proxy\nVmHWM:\t   9000 kB\nVmRSS:\t    8123 kB\nThreads:\t3\n";
        assert_eq!(parse_status_rss_kib(status), Some(8123));
    }

    #[test]
    fn status_rss_missing_is_none() {
        assert_eq!(parse_status_rss_kib("Name:\tkthreadd\nThreads:\t1\n"), None);
    }

    #[test]
    fn cputime_formats_parse() {
        assert_eq!(parse_cputime_seconds("0:01.50"), Some(1.5));
        assert_eq!(parse_cputime_seconds("01:02:03"), Some(3723.0));
        assert_eq!(parse_cputime_seconds("2-00:00:01"), Some(172_801.0));
        assert_eq!(parse_cputime_seconds("soon"), None);
    }

    #[test]
    fn own_process_stats_read() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).expect("own CPU time is readable") >= 0.0);
        assert!(rss_kib(pid).expect("own RSS is readable") > 0);
    }

    #[test]
    fn probe_without_pids_measures_nothing() {
        let mut probe = CpuProbe::new(Vec::new());
        probe.begin().expect("begin with no pids");
        probe.end().expect("end with no pids");
        assert_eq!(probe.cores(), None);
    }
}

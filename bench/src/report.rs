//! Benchmark results and their two output formats: a table for people and JSON for tools.
//!
//! The JSON shape is `{"results":[{"scenario":…,"path":…,"value":…,"unit":…},…]}`, with
//! the optional fields `ratio`, `cpu_cores` and `gbit_per_core` after those four.

use std::fmt::Write as _;

use serde::Serialize;

/// Name of the path that reaches the backend without a proxy.
pub const DIRECT_PATH: &str = "direct";

/// A figure the benchmark reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Scenario {
    /// Throughput of one stream.
    #[value(name = "bulk-1")]
    Bulk1,
    /// Throughput of eight parallel streams.
    #[value(name = "bulk-8")]
    Bulk8,
    /// New connections per second, each with a 1-byte exchange.
    #[value(name = "connect-rate")]
    ConnectRate,
    /// Median latency of a 1 KiB request/response on an open connection.
    #[value(name = "rr-p50")]
    RrP50,
    /// 99th percentile latency of a 1 KiB request/response on an open connection.
    #[value(name = "rr-p99")]
    RrP99,
    /// Proxy RSS growth per idle connection.
    #[value(name = "idle-kib")]
    IdleKib,
}

impl Scenario {
    /// Every scenario, in report order.
    pub const ALL: [Scenario; 6] = [
        Scenario::Bulk1,
        Scenario::Bulk8,
        Scenario::ConnectRate,
        Scenario::RrP50,
        Scenario::RrP99,
        Scenario::IdleKib,
    ];

    /// Name in the report and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Scenario::Bulk1 => "bulk-1",
            Scenario::Bulk8 => "bulk-8",
            Scenario::ConnectRate => "connect-rate",
            Scenario::RrP50 => "rr-p50",
            Scenario::RrP99 => "rr-p99",
            Scenario::IdleKib => "idle-kib",
        }
    }

    /// Unit of the value.
    pub const fn unit(self) -> &'static str {
        match self {
            Scenario::Bulk1 | Scenario::Bulk8 => "Gbit/s",
            Scenario::ConnectRate => "conn/s",
            Scenario::RrP50 | Scenario::RrP99 => "µs",
            Scenario::IdleKib => "KiB",
        }
    }

    /// Returns whether the value is a latency, for which the table also shows the time added.
    const fn is_latency(self) -> bool {
        matches!(self, Scenario::RrP50 | Scenario::RrP99)
    }

    const fn is_bulk(self) -> bool {
        matches!(self, Scenario::Bulk1 | Scenario::Bulk8)
    }

    /// Decimals kept in the output.
    const fn decimals(self) -> i32 {
        match self {
            Scenario::Bulk1 | Scenario::Bulk8 | Scenario::IdleKib => 2,
            Scenario::ConnectRate => 0,
            Scenario::RrP50 | Scenario::RrP99 => 1,
        }
    }
}

/// One figure of one path.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    pub scenario: Scenario,
    /// `direct`, `styx-splice`, `styx-copy`, or a peer's name.
    pub path: String,
    pub value: f64,
    /// Average CPU cores the proxy process used during the measurement; `None` for the
    /// direct path, for a peer without a PID, and for idle-kib.
    pub cpu_cores: Option<f64>,
}

/// All figures of one run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub measurements: Vec<Measurement>,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    results: Vec<JsonResult<'a>>,
}

#[derive(Serialize)]
struct JsonResult<'a> {
    scenario: &'static str,
    path: &'a str,
    value: f64,
    unit: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_cores: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gbit_per_core: Option<f64>,
}

impl Report {
    /// Value of `measurement` divided by the direct path's value for the same scenario.
    pub fn ratio_to_direct(&self, measurement: &Measurement) -> Option<f64> {
        let direct = self.direct_value(measurement.scenario)?;
        (direct != 0.0).then(|| measurement.value / direct)
    }

    /// Throughput per proxy core, for bulk scenarios with a measured CPU.
    pub fn gbit_per_core(measurement: &Measurement) -> Option<f64> {
        let cores = measurement.cpu_cores?;
        (measurement.scenario.is_bulk() && cores > 0.0).then(|| measurement.value / cores)
    }

    /// Serializes the report as one JSON object.
    pub fn to_json(&self) -> String {
        let results = self
            .measurements
            .iter()
            .map(|measurement| JsonResult {
                scenario: measurement.scenario.name(),
                path: &measurement.path,
                value: round(measurement.value, measurement.scenario.decimals()),
                unit: measurement.scenario.unit(),
                ratio: self
                    .ratio_to_direct(measurement)
                    .map(|ratio| round(ratio, 3)),
                cpu_cores: measurement.cpu_cores.map(|cores| round(cores, 2)),
                gbit_per_core: Report::gbit_per_core(measurement).map(|value| round(value, 2)),
            })
            .collect();
        serde_json::to_string(&JsonReport { results }).expect("a report always serializes")
    }

    /// Formats the report as an aligned text table, one row per measurement.
    pub fn to_table(&self) -> String {
        let header = [
            "scenario",
            "path",
            "value",
            "unit",
            "vs direct",
            "proxy CPU",
            "Gbit/s per core",
        ]
        .map(str::to_owned);
        let mut rows = vec![header];
        rows.extend(
            self.measurements
                .iter()
                .map(|measurement| self.table_row(measurement)),
        );

        let mut widths = [0usize; 7];
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }

        let mut table = String::new();
        for row in &rows {
            let mut line = String::new();
            for (index, (cell, width)) in row.iter().zip(widths).enumerate() {
                // Text columns align left, figures right.
                if index < 2 || index == 3 {
                    let _ = write!(line, "{cell:<width$}  ");
                } else {
                    let _ = write!(line, "{cell:>width$}  ");
                }
            }
            table.push_str(line.trim_end());
            table.push('\n');
        }
        table
    }

    fn table_row(&self, measurement: &Measurement) -> [String; 7] {
        let scenario = measurement.scenario;
        let decimals = scenario.decimals() as usize;

        let ratio = match (
            self.ratio_to_direct(measurement),
            self.direct_value(scenario),
        ) {
            (Some(ratio), Some(direct))
                if scenario.is_latency() && measurement.path != DIRECT_PATH =>
            {
                format!("{ratio:.2}x ({:+.1} µs)", measurement.value - direct)
            }
            (Some(ratio), _) => format!("{ratio:.2}x"),
            (None, _) => "-".to_owned(),
        };
        let cpu = measurement
            .cpu_cores
            .map_or_else(|| "-".to_owned(), |cores| format!("{cores:.2} cores"));
        let per_core = Report::gbit_per_core(measurement)
            .map_or_else(|| "-".to_owned(), |value| format!("{value:.1}"));

        [
            scenario.name().to_owned(),
            measurement.path.clone(),
            format!("{:.decimals$}", measurement.value),
            scenario.unit().to_owned(),
            ratio,
            cpu,
            per_core,
        ]
    }

    fn direct_value(&self, scenario: Scenario) -> Option<f64> {
        self.measurements
            .iter()
            .find(|measurement| measurement.scenario == scenario && measurement.path == DIRECT_PATH)
            .map(|measurement| measurement.value)
    }
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measurement(
        scenario: Scenario,
        path: &str,
        value: f64,
        cpu_cores: Option<f64>,
    ) -> Measurement {
        Measurement {
            scenario,
            path: path.to_owned(),
            value,
            cpu_cores,
        }
    }

    fn sample_report() -> Report {
        Report {
            measurements: vec![
                measurement(Scenario::Bulk1, "direct", 27.5, None),
                measurement(Scenario::Bulk1, "styx-splice", 22.0, Some(0.5)),
                measurement(Scenario::RrP50, "direct", 20.04, None),
                measurement(Scenario::RrP50, "haproxy", 45.06, None),
                measurement(Scenario::IdleKib, "styx-copy", 2.345, None),
            ],
        }
    }

    #[test]
    fn json_minimal_shape_exact() {
        let report = Report {
            measurements: vec![measurement(Scenario::Bulk1, "direct", 27.5, None)],
        };
        assert_eq!(
            report.to_json(),
            r#"{"results":[{"scenario":"bulk-1","path":"direct","value":27.5,"unit":"Gbit/s","ratio":1.0}]}"#
        );
    }

    #[test]
    fn json_optional_fields_follow_the_four() {
        let json = sample_report().to_json();
        let parsed: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        let results = parsed["results"].as_array().expect("results is an array");
        assert_eq!(results.len(), 5);

        let splice = &results[1];
        assert_eq!(splice["scenario"], "bulk-1");
        assert_eq!(splice["path"], "styx-splice");
        assert_eq!(splice["value"], 22.0);
        assert_eq!(splice["unit"], "Gbit/s");
        assert_eq!(splice["ratio"], 0.8);
        assert_eq!(splice["cpu_cores"], 0.5);
        assert_eq!(splice["gbit_per_core"], 44.0);

        // serde_json's Value sorts keys, so the order is checked on the text.
        let splice_text = &json[json
            .find(r#"{"scenario":"bulk-1","path":"styx-splice""#)
            .unwrap()..];
        assert!(
            splice_text.starts_with(
                r#"{"scenario":"bulk-1","path":"styx-splice","value":22.0,"unit":"Gbit/s","ratio":0.8,"cpu_cores":0.5,"gbit_per_core":44.0}"#
            ),
            "{json}"
        );
    }

    #[test]
    fn json_without_direct_has_no_ratio() {
        let json = sample_report().to_json();
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        let idle = &parsed["results"][4];
        assert_eq!(idle["scenario"], "idle-kib");
        assert_eq!(idle["value"], 2.35);
        assert_eq!(idle["unit"], "KiB");
        assert!(idle.get("ratio").is_none(), "{idle}");
        assert!(idle.get("cpu_cores").is_none(), "{idle}");
    }

    #[test]
    fn json_units_per_scenario() {
        let units: Vec<&str> = Scenario::ALL
            .iter()
            .map(|scenario| scenario.unit())
            .collect();
        assert_eq!(units, ["Gbit/s", "Gbit/s", "conn/s", "µs", "µs", "KiB"]);
    }

    #[test]
    fn table_shows_ratio_and_cpu() {
        let table = sample_report().to_table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 6, "{table}");
        assert!(lines[0].starts_with("scenario"), "{table}");

        let splice = lines[2];
        assert!(splice.contains("styx-splice"), "{splice}");
        assert!(splice.contains("22.00"), "{splice}");
        assert!(splice.contains("0.80x"), "{splice}");
        assert!(splice.contains("0.50 cores"), "{splice}");
        assert!(splice.contains("44.0"), "{splice}");
    }

    #[test]
    fn table_latency_shows_added_time() {
        let table = sample_report().to_table();
        let haproxy = table.lines().find(|line| line.contains("haproxy")).unwrap();
        assert!(haproxy.contains("45.1"), "{haproxy}");
        assert!(haproxy.contains("2.25x (+25.0 µs)"), "{haproxy}");
    }

    #[test]
    fn table_columns_align() {
        let table = sample_report().to_table();
        let unit_columns: Vec<usize> = table
            .lines()
            .skip(1)
            .map(|line| line.find(['G', 'µ', 'K']).expect("a unit in every row"))
            .collect();
        assert!(
            unit_columns.windows(2).all(|pair| pair[0] == pair[1]),
            "{table}"
        );
    }
}

//! Container records in the JSON layouts of each CLI generation, and Apple's pretty
//! printer (two-space indent, `" : "` after keys, empty containers printed with a blank
//! line inside).

use std::fmt::Write;

use serde_json::{Map, Value, json};

use crate::store::{ContainerConfig, Store};

/// Seconds between the Unix epoch and 2001-01-01T00:00:00Z.
const FOUNDATION_EPOCH_OFFSET_SECS: u64 = 978_307_200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// 0.1 to 0.7: string status, top-level networks, `address` field, no start date.
    V0_7,
    /// 0.8 to 0.12: as 0.7 with `ipv4Address` and a 2001-epoch `startedDate`.
    V0_8,
    /// 1.0 to 1.3: status object, ISO dates, pretty `inspect`, `/` escaped as `\/`.
    V1_2,
    /// 1.4.1: as 1.2 with plain slashes.
    V1_4,
}

impl Layout {
    pub fn from_env() -> Self {
        match std::env::var("CONTAINER_SIM_LAYOUT").as_deref() {
            Ok("0.7") => Self::V0_7,
            Ok("0.8") => Self::V0_8,
            Ok("1.4") => Self::V1_4,
            _ => Self::V1_2,
        }
    }

    pub fn version(self) -> &'static str {
        match self {
            Self::V0_7 => "0.7.1",
            Self::V0_8 => "0.12.3",
            Self::V1_2 => "1.2.2",
            Self::V1_4 => "1.4.1",
        }
    }

    fn escapes_slashes(self) -> bool {
        self != Self::V1_4
    }

    fn is_1x(self) -> bool {
        matches!(self, Self::V1_2 | Self::V1_4)
    }
}

/// Builds the record of one container.
pub fn record(store: &Store, config: &ContainerConfig, layout: Layout) -> Value {
    let running = store.is_running(&config.id);
    let networks: Vec<Value> = match store.read_number(&config.id, "ip") {
        Some(octet) if running => vec![attachment(&config.id, octet, layout)],
        _ => Vec::new(),
    };
    let started = store
        .read_number(&config.id, "started")
        .and_then(|seconds| u64::try_from(seconds).ok());
    let state = if running { "running" } else { "stopped" };
    let configuration = configuration(config, layout);

    if layout.is_1x() {
        let mut status = Map::new();
        status.insert("state".into(), state.into());
        status.insert("networks".into(), networks.into());
        if let Some(seconds) = started {
            status.insert("startedDate".into(), iso_date(seconds).into());
        }
        return json!({"id": config.id, "configuration": configuration, "status": status});
    }

    let mut record = Map::new();
    record.insert("status".into(), state.into());
    record.insert("configuration".into(), configuration);
    record.insert("networks".into(), networks.into());
    if let (Layout::V0_8, Some(seconds)) = (layout, started) {
        let since_2001 = seconds.saturating_sub(FOUNDATION_EPOCH_OFFSET_SECS) as f64 + 0.5;
        record.insert("startedDate".into(), since_2001.into());
    }
    Value::Object(record)
}

fn attachment(id: &str, octet: i64, layout: Layout) -> Value {
    let address = format!("127.77.0.{octet}/24");
    if layout == Layout::V0_7 {
        return json!({"network": "default", "hostname": id, "address": address, "gateway": "127.77.0.1"});
    }
    json!({
        "network": "default",
        "hostname": id,
        "ipv4Address": address,
        "ipv4Gateway": "127.77.0.1",
        "mtu": 1280,
    })
}

fn configuration(config: &ContainerConfig, layout: Layout) -> Value {
    let labels: Map<String, Value> = config
        .labels
        .iter()
        .map(|(key, value)| (key.clone(), value.clone().into()))
        .collect();
    let (executable, arguments) = match config.command.split_first() {
        Some((first, rest)) => (first.clone(), rest.to_vec()),
        None => (String::new(), Vec::new()),
    };
    let mut resources = json!({"cpus": config.cpus, "memoryInBytes": config.memory_bytes});
    let mut value = json!({
        "id": config.id,
        "image": {"reference": config.image},
        "initProcess": {
            "arguments": arguments,
            "environment": config.env,
            "executable": executable,
            "terminal": false,
            "workingDirectory": "/",
        },
        "labels": labels,
        "mounts": config.mounts,
        "networks": [{"network": "default", "options": {"hostname": config.id, "mtu": 1280}}],
        "publishedPorts": [],
        "rosetta": false,
        "runtimeHandler": "container-runtime-linux",
    });
    if layout.is_1x() {
        resources["cpuOverhead"] = 1.into();
        value["creationDate"] = iso_date(config.created).into();
    }
    value["resources"] = resources;
    value
}

/// Formats Unix seconds as `2026-08-10T14:03:22Z`, converting days to a calendar date
/// with the civil-from-days algorithm.
fn iso_date(seconds: u64) -> String {
    let seconds = i64::try_from(seconds).unwrap_or(0);
    let days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400);
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

/// One-line JSON with sorted keys, as `list --format json` and `stats` print.
pub fn compact(value: &Value, layout: Layout) -> String {
    escape(value.to_string(), layout)
}

/// Pretty JSON as 1.x `inspect` prints it; compact before 1.0.
pub fn inspect_output(value: &Value, layout: Layout) -> String {
    if !layout.is_1x() {
        return compact(value, layout);
    }
    let mut out = String::new();
    pretty(value, 0, &mut out);
    escape(out, layout)
}

fn escape(text: String, layout: Layout) -> String {
    // Slashes only occur inside strings in this output, so a plain replace is exact.
    if layout.escapes_slashes() {
        text.replace('/', "\\/")
    } else {
        text
    }
}

fn pretty(value: &Value, indent: usize, out: &mut String) {
    let pad = "  ".repeat(indent);
    let inner = "  ".repeat(indent + 1);
    match value {
        Value::Array(items) if items.is_empty() => {
            let _ = write!(out, "[\n\n{pad}]");
        }
        Value::Object(map) if map.is_empty() => {
            let _ = write!(out, "{{\n\n{pad}}}");
        }
        Value::Array(items) => {
            out.push_str("[\n");
            for (index, item) in items.iter().enumerate() {
                out.push_str(&inner);
                pretty(item, indent + 1, out);
                out.push_str(if index + 1 < items.len() { ",\n" } else { "\n" });
            }
            let _ = write!(out, "{pad}]");
        }
        Value::Object(map) => {
            out.push_str("{\n");
            for (index, (key, item)) in map.iter().enumerate() {
                let _ = write!(out, "{inner}{} : ", Value::from(key.as_str()));
                pretty(item, indent + 1, out);
                out.push_str(if index + 1 < map.len() { ",\n" } else { "\n" });
            }
            let _ = write!(out, "{pad}}}");
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

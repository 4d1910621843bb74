//! Parsers for the JSON that `container inspect`, `container list` and `container stats`
//! print, detecting the layout by its shape rather than by the CLI version.
//!
//! Layouts handled:
//! - 1.0 and later: `status` is an object holding `state`, `networks` and an ISO-8601
//!   `startedDate`.
//! - 0.8 to 0.12: `status` is a string, `networks` and `startedDate` sit at the top
//!   level, and dates are seconds since 2001-01-01T00:00:00Z.
//! - 0.1 to 0.7: as 0.8, with attachment fields `address`/`gateway` in place of
//!   `ipv4Address`/`ipv4Gateway` and no start date.
//!
//! Slashes escaped as `\/` (every version before 1.4.1) are ordinary JSON escapes, so
//! the JSON parser undoes them.

use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Seconds between the Unix epoch and 2001-01-01T00:00:00Z, the epoch of Foundation dates.
const FOUNDATION_EPOCH_OFFSET_SECS: f64 = 978_307_200.0;

/// Failure to read the CLI's JSON.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("invalid JSON from the container CLI: {0}")]
    Syntax(#[from] serde_json::Error),

    #[error("unexpected JSON from the container CLI: {0}")]
    Shape(String),
}

/// Container state as the CLI reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    Running,
    Stopped,
    Stopping,
    /// `unknown`, or a state name this parser does not know.
    Unknown,
}

/// The fields of one container record that the driver uses.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerRecord {
    pub id: String,
    pub state: ContainerState,
    /// IPv4 address of the first network attachment, without its prefix length. Only
    /// a running container has one.
    pub ipv4: Option<Ipv4Addr>,
    pub started_at: Option<SystemTime>,
}

/// One element of `container stats --format json`. Every numeric field is optional,
/// because the CLI omits what the guest could not report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerStats {
    pub id: String,
    /// Cumulative CPU time in microseconds.
    pub cpu_usage_usec: Option<u64>,
    pub memory_usage_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    pub num_processes: Option<u64>,
}

/// Parses the array that `inspect` and `list --format json` print.
pub fn parse_containers(text: &str) -> Result<Vec<ContainerRecord>, JsonError> {
    let value: Value = serde_json::from_str(text)?;
    let items = value
        .as_array()
        .ok_or_else(|| JsonError::Shape("expected an array of containers".into()))?;
    items.iter().map(parse_container).collect()
}

fn parse_container(item: &Value) -> Result<ContainerRecord, JsonError> {
    let id = item
        .get("id")
        .or_else(|| item.pointer("/configuration/id"))
        .and_then(Value::as_str)
        .ok_or_else(|| JsonError::Shape("container record has no id".into()))?
        .to_owned();

    // 1.0 moved state, networks and the start date into a `status` object.
    let (state, networks, started) = match item.get("status") {
        Some(Value::Object(status)) => (
            status.get("state"),
            status.get("networks"),
            status.get("startedDate"),
        ),
        Some(state @ Value::String(_)) => {
            (Some(state), item.get("networks"), item.get("startedDate"))
        }
        _ => {
            return Err(JsonError::Shape(format!(
                "container {id} has no status string or object"
            )));
        }
    };

    let state = match state.and_then(Value::as_str) {
        Some("running") => ContainerState::Running,
        Some("stopped") => ContainerState::Stopped,
        Some("stopping") => ContainerState::Stopping,
        _ => ContainerState::Unknown,
    };
    let ipv4 = networks
        .and_then(Value::as_array)
        .and_then(|attachments| attachments.first())
        .and_then(|first| first.get("ipv4Address").or_else(|| first.get("address")))
        .and_then(Value::as_str)
        .and_then(parse_cidr_address);

    Ok(ContainerRecord {
        id,
        state,
        ipv4,
        started_at: started.and_then(parse_date),
    })
}

/// Returns the address of `192.168.64.7/24`.
fn parse_cidr_address(cidr: &str) -> Option<Ipv4Addr> {
    let address = cidr.split_once('/').map_or(cidr, |(address, _)| address);
    address.parse().ok()
}

/// Reads an ISO-8601 UTC string (1.0 and later) or a number of seconds since 2001-01-01.
fn parse_date(value: &Value) -> Option<SystemTime> {
    match value {
        Value::String(text) => {
            let parsed = chrono::DateTime::parse_from_rfc3339(text).ok()?;
            let seconds = u64::try_from(parsed.timestamp()).ok()?;
            Some(UNIX_EPOCH + Duration::from_secs(seconds))
        }
        Value::Number(number) => {
            let unix = number.as_f64()? + FOUNDATION_EPOCH_OFFSET_SECS;
            (unix >= 0.0).then(|| UNIX_EPOCH + Duration::from_secs_f64(unix))
        }
        _ => None,
    }
}

/// Parses `container stats --no-stream --format json`.
pub fn parse_stats(text: &str) -> Result<Vec<ContainerStats>, JsonError> {
    let value: Value = serde_json::from_str(text)?;
    let items = value
        .as_array()
        .ok_or_else(|| JsonError::Shape("expected an array of stats".into()))?;

    let mut stats = Vec::with_capacity(items.len());
    for item in items {
        let id = item
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| JsonError::Shape("stats record has no id".into()))?;
        let number = |key| item.get(key).and_then(Value::as_u64);
        stats.push(ContainerStats {
            id: id.to_owned(),
            cpu_usage_usec: number("cpuUsageUsec"),
            memory_usage_bytes: number("memoryUsageBytes"),
            memory_limit_bytes: number("memoryLimitBytes"),
            num_processes: number("numProcesses"),
        });
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shape of 1.2.2 `inspect`: pretty printed with `" : "`, sorted keys, escaped
    /// slashes and an empty array printed over three lines.
    const INSPECT_1_2: &str = r#"[
  {
    "configuration" : {
      "capAdd" : [

      ],
      "id" : "web-1",
      "image" : {
        "reference" : "docker.io\/library\/nginx:1.27-alpine"
      }
    },
    "id" : "web-1",
    "status" : {
      "networks" : [
        {
          "hostname" : "web-1",
          "ipv4Address" : "192.168.64.7\/24",
          "ipv4Gateway" : "192.168.64.1",
          "network" : "default"
        }
      ],
      "startedDate" : "2026-08-10T14:03:22Z",
      "state" : "running"
    }
  }
]"#;

    #[test]
    fn layout_1_2_running() {
        let records = parse_containers(INSPECT_1_2).unwrap();

        assert_eq!(records.len(), 1);
        assert_eq!(records[0].id, "web-1");
        assert_eq!(records[0].state, ContainerState::Running);
        assert_eq!(records[0].ipv4, Some(Ipv4Addr::new(192, 168, 64, 7)));
        let started = records[0].started_at.unwrap();
        assert_eq!(
            started.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_786_370_602
        );
    }

    #[test]
    fn layout_1_x_stopped_has_no_address() {
        let text = r#"[{"configuration":{"id":"web-1"},"id":"web-1","status":{"networks":[],"state":"stopped"}}]"#;
        let records = parse_containers(text).unwrap();

        assert_eq!(records[0].state, ContainerState::Stopped);
        assert_eq!(records[0].ipv4, None);
        assert_eq!(records[0].started_at, None);
    }

    #[test]
    fn layout_0_8_string_status() {
        let text = r#"[{"status":"running","configuration":{"id":"web-1"},"networks":[{"network":"default","hostname":"web","ipv4Address":"192.168.64.10\/24","ipv4Gateway":"192.168.64.1"}],"startedDate":776523802.5}]"#;
        let records = parse_containers(text).unwrap();

        assert_eq!(records[0].id, "web-1");
        assert_eq!(records[0].state, ContainerState::Running);
        assert_eq!(records[0].ipv4, Some(Ipv4Addr::new(192, 168, 64, 10)));
        let started = records[0].started_at.unwrap();
        assert_eq!(
            started.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            776_523_802 + 978_307_200
        );
    }

    #[test]
    fn layout_0_7_address_field() {
        let text = r#"[{"status":"running","configuration":{"id":"web-1"},"networks":[{"network":"default","hostname":"web","address":"192.168.64.3/24","gateway":"192.168.64.1"}]}]"#;
        let records = parse_containers(text).unwrap();

        assert_eq!(records[0].ipv4, Some(Ipv4Addr::new(192, 168, 64, 3)));
        assert_eq!(records[0].started_at, None);
    }

    #[test]
    fn unknown_state_is_tolerated() {
        let text = r#"[{"id":"a","status":{"state":"paused","networks":[]}}]"#;
        assert_eq!(
            parse_containers(text).unwrap()[0].state,
            ContainerState::Unknown
        );
    }

    #[test]
    fn record_without_status_is_rejected() {
        let error = parse_containers(r#"[{"id":"a"}]"#).unwrap_err();
        assert!(error.to_string().contains("container a"), "{error}");
        assert!(parse_containers(r#"{"id":"a"}"#).is_err());
        assert!(parse_containers("not json").is_err());
    }

    #[test]
    fn stats_with_missing_fields() {
        let text = r#"[{"blockReadBytes":4718592,"cpuUsageUsec":1234567,"id":"web-1","memoryLimitBytes":536870912,"memoryUsageBytes":47431680,"numProcesses":3},{"id":"db"}]"#;
        let stats = parse_stats(text).unwrap();

        assert_eq!(stats[0].cpu_usage_usec, Some(1_234_567));
        assert_eq!(stats[0].memory_usage_bytes, Some(47_431_680));
        assert_eq!(stats[0].memory_limit_bytes, Some(536_870_912));
        assert_eq!(stats[0].num_processes, Some(3));
        assert_eq!(
            stats[1],
            ContainerStats {
                id: "db".into(),
                ..ContainerStats::default()
            }
        );
    }
}

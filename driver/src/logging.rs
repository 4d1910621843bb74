//! hclog-style JSON log lines on stderr, the format a Nomad client parses from plugins.
//!
//! Each event becomes one JSON object on one line with `@level`, `@message`,
//! `@timestamp` and `@module`, plus the event's fields. Nomad accepts the timestamp only
//! in the Go layout `2006-01-02T15:04:05.000000Z07:00`, with exactly six fractional
//! digits, and the level only as `trace`, `debug`, `info`, `warn` or `error`. Any other
//! form turns the line into plain text logged at debug.
//!
//! Write errors are ignored: after the Nomad agent exits, stderr is a broken pipe, and
//! the plugin must keep running so that the next agent can reattach to it. A reattached
//! agent no longer reads the plugin's stderr, so [`open_log_file`] offers a second copy
//! of every line in a file.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Timestamp layout matching Go's `2006-01-02T15:04:05.000000Z07:00` for UTC.
const TIMESTAMP_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.6fZ";

/// Layer that writes hclog JSON lines to a writer made by `make_writer` per line.
pub struct HclogLayer<W> {
    make_writer: W,
}

impl HclogLayer<fn() -> io::Stderr> {
    pub fn stderr() -> Self {
        Self {
            make_writer: io::stderr,
        }
    }
}

/// Opens `path` for appending log lines, creating it readable by the owner only.
pub fn open_log_file(path: &Path) -> io::Result<SharedFile> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    Ok(SharedFile(Arc::new(file)))
}

/// A log file that every line writer shares. Appends from several threads do not
/// interleave within a line, because each line is one `write` call on an `O_APPEND` file.
#[derive(Debug, Clone)]
pub struct SharedFile(Arc<File>);

impl Write for SharedFile {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        (&*self.0).write(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        (&*self.0).flush()
    }
}

impl<W, O> HclogLayer<W>
where
    W: Fn() -> O + Send + Sync + 'static,
    O: Write,
{
    pub fn new(make_writer: W) -> Self {
        Self { make_writer }
    }
}

impl<S, W, O> Layer<S> for HclogLayer<W>
where
    S: Subscriber,
    W: Fn() -> O + Send + Sync + 'static,
    O: Write,
{
    fn on_event(&self, event: &Event<'_>, _context: Context<'_, S>) {
        let mut line = format_line(event, chrono::Utc::now());
        line.push('\n');

        // One write call per line keeps lines whole when several threads log at once.
        // The result is ignored on purpose, see the module docs.
        let mut writer = (self.make_writer)();
        let _ = writer.write_all(line.as_bytes());
        let _ = writer.flush();
    }
}

fn format_line(event: &Event<'_>, now: chrono::DateTime<chrono::Utc>) -> String {
    let metadata = event.metadata();
    let mut fields = FieldVisitor::default();
    event.record(&mut fields);

    let mut object = Map::new();
    object.insert("@level".into(), Value::from(level_name(metadata.level())));
    object.insert(
        "@message".into(),
        Value::from(fields.message.unwrap_or_default()),
    );
    object.insert(
        "@module".into(),
        Value::from(module_name(metadata.target())),
    );
    object.insert(
        "@timestamp".into(),
        Value::from(now.format(TIMESTAMP_FORMAT).to_string()),
    );
    for (key, value) in fields.fields {
        object.entry(key).or_insert(value);
    }
    Value::Object(object).to_string()
}

fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warn",
        Level::ERROR => "error",
    }
}

/// Turns a tracing target such as `styx_driver::fingerprint` into the dotted hclog
/// module name `styx_driver.fingerprint`.
fn module_name(target: &str) -> String {
    target.replace("::", ".")
}

#[derive(Default)]
struct FieldVisitor {
    message: Option<String>,
    fields: Vec<(String, Value)>,
}

impl FieldVisitor {
    fn insert(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                Value::String(text) => text,
                other => other.to_string(),
            });
        } else {
            self.fields.push((field.name().to_owned(), value));
        }
    }
}

impl Visit for FieldVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.insert(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.insert(field, Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.insert(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.insert(field, Value::from(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.insert(field, Value::from(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.insert(field, Value::from(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.insert(field, Value::from(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Writer that fails like stderr after the Nomad agent has gone.
    struct BrokenPipe;

    impl Write for BrokenPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }

        fn flush(&mut self) -> io::Result<()> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
    }

    fn capture(log: impl FnOnce()) -> Vec<Value> {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber =
            tracing_subscriber::registry().with(HclogLayer::new(move || writer.clone()));
        tracing::subscriber::with_default(subscriber, log);

        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).expect("every line is JSON"))
            .collect()
    }

    #[test]
    fn event_becomes_hclog_json() {
        let lines =
            capture(|| tracing::warn!(task_id = "a/b/c", attempts = 3u64, "task restarted"));

        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        assert_eq!(line["@level"], "warn");
        assert_eq!(line["@message"], "task restarted");
        assert_eq!(line["@module"], "styx_driver.logging.tests");
        assert_eq!(line["task_id"], "a/b/c");
        assert_eq!(line["attempts"], 3);
    }

    #[test]
    fn timestamp_has_six_fraction_digits() {
        let lines = capture(|| tracing::info!("started"));
        let timestamp = lines[0]["@timestamp"].as_str().unwrap().to_owned();

        // 2026-08-21T08:33:58.123456Z
        assert_eq!(timestamp.len(), 27, "{timestamp}");
        assert_eq!(&timestamp[19..20], ".");
        assert!(
            timestamp[20..26].chars().all(|c| c.is_ascii_digit()),
            "{timestamp}"
        );
        assert!(timestamp.ends_with('Z'));
    }

    #[test]
    fn broken_pipe_is_ignored() {
        let subscriber = tracing_subscriber::registry().with(HclogLayer::new(|| BrokenPipe));
        tracing::subscriber::with_default(subscriber, || tracing::error!("nobody reads this"));
    }
}

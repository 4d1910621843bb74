//! The real `styx-driver` binary driven the way a Nomad client drives it: launched with
//! Nomad's environment, handshake read from stdout, gRPC over the unix socket, using the
//! harness in the `styx-tests` crate.
//!
//! Timeouts here only stop a hung test and assert no speed. The one exception is the 2 s
//! exit after Shutdown, because the Nomad client sends SIGKILL after that long.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use prost::Message;
use styx_driver::proto::base::{
    ConfigSchemaRequest, NomadConfig, NomadDriverConfig, PluginInfoRequest, PluginType,
    SetConfigRequest,
};
use styx_driver::proto::drivers::{
    CapabilitiesRequest, FingerprintRequest, FingerprintResponse, InitRequest, ShutdownRequest,
    StartTaskRequest, TaskConfig, TaskConfigSchemaRequest, TaskEventsRequest, WaitTaskRequest,
    fingerprint_response::HealthState,
};
use styx_driver::proto::hclspec::Spec;
use styx_driver::proto::plugin::Empty;
use styx_driver::proto::structs::attribute;
use styx_tests::cty::{Value, encode_value, encode_with_spec};
use styx_tests::fake_container::FakeContainer;
use styx_tests::nomad::{LaunchOptions, Plugin, run_to_exit, send_signal};
use tonic::{Code, Streaming};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

const BINARY: &str = env!("CARGO_BIN_EXE_styx-driver");

/// Stops a test that hangs; generous because several helpers build on a busy machine.
const HANG_TIMEOUT: Duration = Duration::from_secs(20);

/// Time to wait for a message that must not come; long next to the 100 ms probe interval.
const QUIET_PERIOD: Duration = Duration::from_secs(1);

/// Starts the plugin with Nomad's environment and its socket in `dir`.
async fn start_in(dir: &Path) -> Plugin {
    let options = LaunchOptions {
        socket_dir: Some(dir.to_owned()),
        ..LaunchOptions::default()
    };
    Plugin::start(Path::new(BINARY), &options)
        .await
        .expect("plugin starts")
}

/// Encodes a plugin config body with the plugin's own schema, as Nomad does.
async fn plugin_config_bytes(plugin: &Plugin, body: &Value) -> Vec<u8> {
    let schema = plugin
        .base()
        .config_schema(ConfigSchemaRequest {})
        .await
        .expect("ConfigSchema succeeds")
        .into_inner()
        .spec
        .expect("plugin has a config schema");
    encode_with_spec(&schema, body).expect("config matches the schema")
}

async fn set_config(plugin: &Plugin, msgpack_config: Vec<u8>) -> Result<(), tonic::Status> {
    let request = SetConfigRequest {
        msgpack_config,
        nomad_config: None,
        plugin_api_version: "v0.1.0".to_owned(),
    };
    plugin.base().set_config(request).await.map(drop)
}

/// Configures the plugin to use `fake` and to re-probe every 100 ms.
async fn use_fake_container(plugin: &Plugin, fake: &FakeContainer) {
    let body = Value::object([
        (
            "container_path",
            Value::string(fake.path().to_str().unwrap()),
        ),
        ("fingerprint_interval", Value::string("100ms")),
    ]);
    let bytes = plugin_config_bytes(plugin, &body).await;
    set_config(plugin, bytes)
        .await
        .expect("valid config is accepted");
}

/// Starts the plugin in a fresh directory that also contains a fake `container` CLI,
/// and points the plugin at it.
async fn start_with_fake_container() -> (tempfile::TempDir, FakeContainer, Plugin) {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeContainer::install(dir.path()).unwrap();
    let plugin = start_in(dir.path()).await;
    use_fake_container(&plugin, &fake).await;
    (dir, fake, plugin)
}

async fn next_fingerprint(stream: &mut Streaming<FingerprintResponse>) -> FingerprintResponse {
    tokio::time::timeout(HANG_TIMEOUT, stream.message())
        .await
        .expect("fingerprint arrives")
        .expect("stream has no error")
        .expect("stream is still open")
}

fn string_attribute(response: &FingerprintResponse, name: &str) -> Option<String> {
    match response.attributes.get(name)?.value.as_ref()? {
        attribute::Value::StringVal(text) => Some(text.clone()),
        _ => None,
    }
}

#[tokio::test]
async fn handshake_line_format() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = start_in(dir.path()).await;
    let handshake = &plugin.handshake;

    let fields: Vec<&str> = handshake.line.split('|').collect();
    assert_eq!(fields.len(), 6, "line {:?}", handshake.line);
    assert_eq!(fields[0], "1");
    assert_eq!(fields[1], "2");
    assert_eq!(fields[2], "unix");
    assert_eq!(fields[4], "grpc");
    assert_eq!(fields[5], "", "no AutoMTLS certificate");

    let socket = plugin.socket_path();
    assert!(socket.is_absolute());
    assert_eq!(socket.parent(), Some(dir.path()));
    assert!(
        socket
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("plugin")
    );
    let metadata = std::fs::metadata(&socket).unwrap();
    assert!(metadata.file_type().is_socket());
    assert_eq!(metadata.permissions().mode() & 0o777, 0o600);
}

#[tokio::test]
async fn socket_group_gets_access() {
    let dir = tempfile::tempdir().unwrap();
    let gid = std::fs::metadata(dir.path()).unwrap().gid();
    let options = LaunchOptions {
        socket_dir: Some(dir.path().to_owned()),
        socket_group: Some(gid.to_string()),
        ..LaunchOptions::default()
    };
    let plugin = Plugin::start(Path::new(BINARY), &options).await.unwrap();

    let metadata = std::fs::metadata(plugin.socket_path()).unwrap();
    assert_eq!(metadata.gid(), gid);
    assert_eq!(metadata.permissions().mode() & 0o777, 0o660);
}

#[tokio::test]
async fn launch_without_cookie_is_rejected() {
    let options = LaunchOptions {
        magic_cookie: None,
        ..LaunchOptions::default()
    };
    let output = run_to_exit(Path::new(BINARY), &options, HANG_TIMEOUT)
        .await
        .unwrap();

    assert_eq!(output.status.code(), Some(1));
    assert!(
        output.stdout.is_empty(),
        "no handshake line without the cookie"
    );
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("not meant to be run by hand"), "{stderr}");
    assert!(stderr.contains("plugin_dir"), "{stderr}");
}

#[test]
fn version_and_help_need_no_cookie() {
    for (flag, expected) in [
        ("--version", "styx-driver "),
        ("--help", "started by Nomad"),
    ] {
        let output = std::process::Command::new(BINARY)
            .arg(flag)
            .env_remove("NOMAD_PLUGIN_MAGIC_COOKIE")
            .output()
            .unwrap();

        assert_eq!(output.status.code(), Some(0), "{flag}");
        let stdout = String::from_utf8(output.stdout).unwrap();
        assert!(stdout.contains(expected), "{flag}: {stdout}");
        assert!(
            stdout.contains(env!("CARGO_PKG_VERSION")),
            "{flag}: {stdout}"
        );
        assert!(output.stderr.is_empty(), "{flag}");
    }
}

#[tokio::test]
async fn launch_with_wrong_cookie_is_rejected() {
    let options = LaunchOptions {
        magic_cookie: Some("not-nomad".to_owned()),
        ..LaunchOptions::default()
    };
    let output = run_to_exit(Path::new(BINARY), &options, HANG_TIMEOUT)
        .await
        .unwrap();

    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
}

#[tokio::test]
async fn launch_without_protocol_two_is_rejected() {
    let options = LaunchOptions {
        protocol_versions: "3".to_owned(),
        ..LaunchOptions::default()
    };
    let output = run_to_exit(Path::new(BINARY), &options, HANG_TIMEOUT)
        .await
        .unwrap();

    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("version 2"), "{stderr}");
}

#[tokio::test]
async fn health_reports_plugin_serving() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = start_in(dir.path()).await;

    let request = HealthCheckRequest {
        service: "plugin".to_owned(),
    };
    let response = plugin.health().check(request).await.unwrap().into_inner();
    assert_eq!(response.status, ServingStatus::Serving as i32);
}

#[tokio::test]
async fn plugin_info_identifies_driver() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = start_in(dir.path()).await;

    let info = plugin
        .base()
        .plugin_info(PluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.r#type, PluginType::Driver as i32);
    assert_eq!(info.plugin_api_versions, ["v0.1.0"]);
    assert_eq!(info.name, "apple-container");

    // Nomad parses the version with hashicorp/go-version: dotted numbers first.
    let numbers: Vec<&str> = info
        .plugin_version
        .split('-')
        .next()
        .unwrap()
        .split('.')
        .collect();
    assert_eq!(numbers.len(), 3, "{}", info.plugin_version);
    assert!(
        numbers.iter().all(|part| part.parse::<u64>().is_ok()),
        "{}",
        info.plugin_version
    );
}

#[tokio::test]
async fn schemas_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = start_in(dir.path()).await;

    let config_schema = plugin
        .base()
        .config_schema(ConfigSchemaRequest {})
        .await
        .unwrap()
        .into_inner();
    let task_schema = plugin
        .driver()
        .task_config_schema(TaskConfigSchemaRequest {})
        .await
        .unwrap()
        .into_inner();

    for spec in [
        config_schema.spec.expect("config spec set"),
        task_schema.spec.expect("task spec set"),
    ] {
        let bytes = spec.encode_to_vec();
        assert_eq!(Spec::decode(bytes.as_slice()).unwrap(), spec);
        // Applying the schema to an empty block, as Nomad does, must not fail on the
        // schema itself (for example an unnamed Attr inside a Default).
        let empty = encode_with_spec(&spec, &Value::object([]));
        if let Err(error) = &empty {
            assert!(
                error.0.contains("Missing required argument \"image\""),
                "{error}"
            );
        }
    }
}

#[tokio::test]
async fn set_config_accepts_valid_config() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = start_in(dir.path()).await;

    let body = Value::object([
        (
            "container_path",
            Value::string("/opt/homebrew/bin/container"),
        ),
        ("port_offset", Value::number("20000")),
        ("bind_address", Value::string("100.64.0.7")),
        ("preconnect_pool_size", Value::number("4")),
        ("metrics_address", Value::string("127.0.0.1:9464")),
        ("stats_interval", Value::string("2s")),
        ("gc", Value::object([("container", Value::Bool(false))])),
    ]);
    let bytes = plugin_config_bytes(&plugin, &body).await;
    set_config(&plugin, bytes)
        .await
        .expect("valid config is accepted");

    // The agent's config validation pass sends no nomad_config; the long-lived instance
    // sends one. Both must work, and so must an empty block.
    let empty = plugin_config_bytes(&plugin, &Value::object([])).await;
    let request = SetConfigRequest {
        msgpack_config: empty,
        nomad_config: Some(NomadConfig {
            driver: Some(NomadDriverConfig {
                client_max_port: 14000,
                client_min_port: 14000,
                topology: None,
            }),
        }),
        plugin_api_version: "v0.1.0".to_owned(),
    };
    plugin
        .base()
        .set_config(request)
        .await
        .expect("empty config is accepted");
}

#[tokio::test]
async fn set_config_wrong_type_names_attribute() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = start_in(dir.path()).await;

    // Nomad's hcldec would catch this; the plugin must still name the attribute.
    let body = Value::object([("port_offset", Value::Bool(true))]);
    let status = set_config(&plugin, encode_value(&body)).await.unwrap_err();

    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("\"port_offset\""),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("a number"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn set_config_unknown_attribute_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = start_in(dir.path()).await;

    let body = Value::object([("port_ofset", Value::number("10000"))]);
    let status = set_config(&plugin, encode_value(&body)).await.unwrap_err();

    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("\"port_ofset\""),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("port_offset"),
        "lists the supported names: {}",
        status.message()
    );
}

#[tokio::test]
async fn start_task_rejects_invalid_task() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = start_in(dir.path()).await;
    let schema = plugin
        .driver()
        .task_config_schema(TaskConfigSchemaRequest {})
        .await
        .unwrap()
        .into_inner()
        .spec
        .unwrap();
    let task = |config: Vec<u8>| StartTaskRequest {
        task: Some(TaskConfig {
            id: "8c3b0a42-1d5e-4f7a-9b6c-2e1f0d9a8b7c/web/5f2c9d1e".to_owned(),
            name: "web".to_owned(),
            msgpack_driver_config: config,
            ..TaskConfig::default()
        }),
    };

    let invalid = Value::object([
        ("image", Value::string("nginx")),
        ("ports", Value::strings(&["http", "http"])),
    ]);
    let status = plugin
        .driver()
        .start_task(task(encode_with_spec(&schema, &invalid).unwrap()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("\"ports[1]\""),
        "{}",
        status.message()
    );

    // A valid config without Nomad's resources fails before any CLI call.
    let valid = Value::object([("image", Value::string("nginx:alpine"))]);
    let status = plugin
        .driver()
        .start_task(task(encode_with_spec(&schema, &valid).unwrap()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("below the 200 MB"),
        "{}",
        status.message()
    );

    let status = plugin
        .driver()
        .wait_task(WaitTaskRequest {
            task_id: "any".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn capabilities_match_macos_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = start_in(dir.path()).await;

    let capabilities = plugin
        .driver()
        .capabilities(CapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities
        .expect("capabilities set");
    assert!(!capabilities.must_create_network);
    assert_eq!(capabilities.network_isolation_modes, [0], "host mode only");
    assert_eq!(capabilities.fs_isolation, 2, "image isolation");
}

#[tokio::test]
async fn fingerprint_first_message_is_prompt_and_healthy() {
    let (_dir, _fake, plugin) = start_with_fake_container().await;

    let mut stream = plugin
        .driver()
        .fingerprint(FingerprintRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = next_fingerprint(&mut stream).await;

    assert_eq!(
        first.health,
        HealthState::Healthy as i32,
        "{}",
        first.health_description
    );
    assert_eq!(first.err, "");
    assert_eq!(
        string_attribute(&first, "driver.apple-container.version").as_deref(),
        Some("1.2.2")
    );
    assert_eq!(
        string_attribute(&first, "driver.apple-container.plugin_version").as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        string_attribute(&first, "driver.apple-container.os").as_deref(),
        Some(std::env::consts::OS)
    );
    assert_eq!(
        string_attribute(&first, "driver.apple-container.arch").as_deref(),
        Some(std::env::consts::ARCH)
    );
}

#[tokio::test]
async fn fingerprint_stream_stays_open() {
    let (_dir, _fake, plugin) = start_with_fake_container().await;

    let mut stream = plugin
        .driver()
        .fingerprint(FingerprintRequest {})
        .await
        .unwrap()
        .into_inner();
    next_fingerprint(&mut stream).await;

    // Several probe intervals pass with no change: no message, and no end of stream.
    let next = tokio::time::timeout(QUIET_PERIOD, stream.message()).await;
    assert!(
        next.is_err(),
        "stream ended or sent an unchanged fingerprint: {next:?}"
    );
}

#[tokio::test]
async fn fingerprint_health_follows_container_cli() {
    let (dir, fake, plugin) = start_with_fake_container().await;

    let mut stream = plugin
        .driver()
        .fingerprint(FingerprintRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        next_fingerprint(&mut stream).await.health,
        HealthState::Healthy as i32
    );

    fake.set_system_running(false).unwrap();
    let stopped = next_fingerprint(&mut stream).await;
    assert_eq!(stopped.health, HealthState::Unhealthy as i32);
    assert!(
        stopped
            .health_description
            .contains("container system start"),
        "{}",
        stopped.health_description
    );
    assert!(
        stopped
            .health_description
            .contains("apiserver is not running"),
        "{}",
        stopped.health_description
    );

    fake.uninstall().unwrap();
    let missing = next_fingerprint(&mut stream).await;
    assert_eq!(missing.health, HealthState::Undetected as i32);
    assert!(
        missing
            .health_description
            .contains(fake.path().to_str().unwrap()),
        "{}",
        missing.health_description
    );
    assert!(
        missing.health_description.contains("container_path"),
        "{}",
        missing.health_description
    );

    let reinstalled = FakeContainer::install(dir.path()).unwrap();
    reinstalled.set_system_running(true).unwrap();
    assert_eq!(
        next_fingerprint(&mut stream).await.health,
        HealthState::Healthy as i32
    );
}

#[tokio::test]
async fn fingerprint_reprobes_on_config_change() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeContainer::install(dir.path()).unwrap();
    let plugin = start_in(dir.path()).await;
    let missing = Value::object([(
        "container_path",
        Value::string("/nonexistent/bin/container"),
    )]);
    let bytes = plugin_config_bytes(&plugin, &missing).await;
    set_config(&plugin, bytes).await.unwrap();

    let mut stream = plugin
        .driver()
        .fingerprint(FingerprintRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = next_fingerprint(&mut stream).await;
    assert_eq!(first.health, HealthState::Undetected as i32);
    assert!(
        first
            .health_description
            .contains("/nonexistent/bin/container")
    );

    // The default probe interval is 30 s, so only the config change can explain a new
    // fingerprint within the hang timeout.
    let found = Value::object([(
        "container_path",
        Value::string(fake.path().to_str().unwrap()),
    )]);
    let bytes = plugin_config_bytes(&plugin, &found).await;
    set_config(&plugin, bytes).await.unwrap();
    assert_eq!(
        next_fingerprint(&mut stream).await.health,
        HealthState::Healthy as i32
    );
}

#[tokio::test]
async fn driver_shutdown_keeps_plugin_running() {
    let dir = tempfile::tempdir().unwrap();
    let mut plugin = start_in(dir.path()).await;

    plugin
        .driver()
        .shutdown(ShutdownRequest {})
        .await
        .expect("Shutdown succeeds");
    let info = plugin.base().plugin_info(PluginInfoRequest {}).await;
    assert!(
        info.is_ok(),
        "plugin stopped serving after Driver.Shutdown: {info:?}"
    );
    assert!(
        plugin.try_exit_status().unwrap().is_none(),
        "plugin exited on Driver.Shutdown"
    );
}

#[tokio::test]
async fn task_events_stream_stays_open() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = start_in(dir.path()).await;

    let mut stream = plugin
        .driver()
        .task_events(TaskEventsRequest {})
        .await
        .unwrap()
        .into_inner();
    let next = tokio::time::timeout(QUIET_PERIOD, stream.message()).await;
    assert!(next.is_err(), "TaskEvents ended or sent an event: {next:?}");
}

#[tokio::test]
async fn shutdown_exits_within_two_seconds() {
    let (_dir, _fake, mut plugin) = start_with_fake_container().await;

    // Open streams must not hold the process up.
    let _fingerprints = plugin
        .driver()
        .fingerprint(FingerprintRequest {})
        .await
        .unwrap();
    let _events = plugin
        .driver()
        .task_events(TaskEventsRequest {})
        .await
        .unwrap();
    let socket = plugin.socket_path();

    plugin
        .controller()
        .shutdown(Empty {})
        .await
        .expect("Shutdown succeeds");
    let status = plugin
        .wait_exit(Duration::from_secs(2))
        .await
        .expect("exits within 2 s");
    assert!(status.success(), "{status}");
    assert!(!socket.exists(), "socket file removed at exit");
}

#[tokio::test]
async fn stderr_lines_are_hclog_json() {
    let (_dir, _fake, mut plugin) = start_with_fake_container().await;
    let mut stream = plugin
        .driver()
        .fingerprint(FingerprintRequest {})
        .await
        .unwrap()
        .into_inner();
    next_fingerprint(&mut stream).await;

    plugin.controller().shutdown(Empty {}).await.unwrap();
    plugin.wait_exit(HANG_TIMEOUT).await.unwrap();
    plugin.drain_output().await;

    let lines = plugin.stderr_lines();
    let messages: Vec<String> = lines
        .iter()
        .map(|line| {
            let object: BTreeMap<String, serde_json::Value> = serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("not JSON ({error}): {line}"));
            let level = object["@level"].as_str().expect("@level is a string");
            assert!(
                ["trace", "debug", "info", "warn", "error"].contains(&level),
                "{line}"
            );
            assert!(object["@module"].is_string(), "{line}");
            assert!(
                is_go_timestamp(
                    object["@timestamp"]
                        .as_str()
                        .expect("@timestamp is a string")
                ),
                "{line}"
            );
            object["@message"]
                .as_str()
                .expect("@message is a string")
                .to_owned()
        })
        .collect();

    assert_eq!(
        plugin.stdout_lines_after_handshake(),
        Vec::<String>::new(),
        "stdout carries only the handshake"
    );
    for expected in [
        "plugin listening",
        "plugin config applied",
        "driver health changed",
        "plugin stopped",
    ] {
        assert!(
            messages.iter().any(|message| message == expected),
            "no {expected:?} in {messages:?}"
        );
    }
}

/// Checks the Go layout `2006-01-02T15:04:05.000000Z07:00` with a `Z` zone.
fn is_go_timestamp(text: &str) -> bool {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| bytes[range].iter().all(u8::is_ascii_digit);
    bytes.len() == 27
        && digits(0..4)
        && bytes[4] == b'-'
        && digits(5..7)
        && bytes[7] == b'-'
        && digits(8..10)
        && bytes[10] == b'T'
        && digits(11..13)
        && bytes[13] == b':'
        && digits(14..16)
        && bytes[16] == b':'
        && digits(17..19)
        && bytes[19] == b'.'
        && digits(20..26)
        && bytes[26] == b'Z'
}

#[tokio::test]
async fn closed_output_pipes_do_not_stop_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeContainer::install(dir.path()).unwrap();
    let log_file = dir.path().join("styx-driver.log");
    let options = LaunchOptions {
        socket_dir: Some(dir.path().to_owned()),
        env: vec![(
            "STYX_DRIVER_LOG_FILE".to_owned(),
            log_file.to_str().unwrap().to_owned(),
        )],
        ..LaunchOptions::default()
    };
    let mut plugin = Plugin::start(Path::new(BINARY), &options).await.unwrap();

    // The Nomad agent has died, so no process reads stdout or stderr any more.
    plugin.close_output_pipes().await;

    // SetConfig and fingerprinting log at info, so these writes hit the broken pipe.
    use_fake_container(&plugin, &fake).await;
    let mut stream = plugin
        .driver()
        .fingerprint(FingerprintRequest {})
        .await
        .unwrap()
        .into_inner();
    next_fingerprint(&mut stream).await;

    let info = plugin.base().plugin_info(PluginInfoRequest {}).await;
    assert!(info.is_ok(), "plugin stopped serving: {info:?}");
    assert!(plugin.try_exit_status().unwrap().is_none(), "plugin exited");

    // The log file still receives what stderr no longer can.
    let logged = std::fs::read_to_string(&log_file).unwrap();
    assert!(logged.contains("\"driver health changed\""), "{logged}");
    let mode = std::fs::metadata(&log_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn sigint_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let mut plugin = start_in(dir.path()).await;

    send_signal(plugin.pid().unwrap(), "-INT").unwrap();
    let info = plugin.base().plugin_info(PluginInfoRequest {}).await;
    assert!(
        info.is_ok(),
        "plugin stopped serving after SIGINT: {info:?}"
    );
    assert!(
        plugin.try_exit_status().unwrap().is_none(),
        "plugin exited on SIGINT"
    );
}

#[tokio::test]
async fn new_connection_after_disconnect() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = start_in(dir.path()).await;

    // A reattaching Nomad agent dials the same socket again.
    let channel = styx_tests::nomad::connect_unix(&plugin.socket_path())
        .await
        .unwrap();
    let mut client = styx_driver::proto::base::base_plugin_client::BasePluginClient::new(channel);
    let info = client
        .plugin_info(PluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "apple-container");
}

/// Replays the calls a Nomad agent makes at startup: a fingerprint launch, a config
/// validation launch, then the long-lived instance with its streams and the calls of
/// a task runner.
#[tokio::test]
async fn agent_startup_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeContainer::install(dir.path()).unwrap();
    let body = Value::object([(
        "container_path",
        Value::string(fake.path().to_str().unwrap()),
    )]);

    // 1. Loader pass: identity and schema, then Kill().
    let mut plugin = start_in(dir.path()).await;
    let info = plugin
        .base()
        .plugin_info(PluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.r#type, PluginType::Driver as i32);
    let config = plugin_config_bytes(&plugin, &body).await;
    plugin.controller().shutdown(Empty {}).await.unwrap();
    plugin.wait_exit(Duration::from_secs(2)).await.unwrap();

    // 2. Validation pass: SetConfig twice without nomad_config, then Kill().
    let mut plugin = start_in(dir.path()).await;
    set_config(&plugin, config.clone()).await.unwrap();
    set_config(&plugin, config.clone()).await.unwrap();
    plugin.controller().shutdown(Empty {}).await.unwrap();
    plugin.wait_exit(Duration::from_secs(2)).await.unwrap();

    // 3. Long-lived instance: SetConfig with nomad_config, Init, both streams.
    let plugin = start_in(dir.path()).await;
    let request = SetConfigRequest {
        msgpack_config: config,
        nomad_config: Some(NomadConfig {
            driver: Some(NomadDriverConfig {
                client_max_port: 32000,
                client_min_port: 20000,
                topology: None,
            }),
        }),
        plugin_api_version: info.plugin_api_versions[0].clone(),
    };
    plugin.base().set_config(request).await.unwrap();
    plugin.driver().init(InitRequest {}).await.unwrap();

    let mut fingerprints = plugin
        .driver()
        .fingerprint(FingerprintRequest {})
        .await
        .unwrap()
        .into_inner();
    let _events = plugin
        .driver()
        .task_events(TaskEventsRequest {})
        .await
        .unwrap();
    assert_eq!(
        next_fingerprint(&mut fingerprints).await.health,
        HealthState::Healthy as i32
    );

    // 4. A task runner starts: schema and capabilities.
    let schema = plugin
        .driver()
        .task_config_schema(TaskConfigSchemaRequest {})
        .await
        .unwrap();
    assert!(schema.into_inner().spec.is_some());
    plugin
        .driver()
        .capabilities(CapabilitiesRequest {})
        .await
        .unwrap();
}

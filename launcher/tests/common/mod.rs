//! Test fixtures: fake external programs on PATH and a runner for the `styx` binary.
//!
//! Each fake is a small shell script that appends its argv to `calls.log` and prints
//! recorded output. For a program `P` called with first argument `A`, it prints
//! `P.A.out` (else `P.out`) to stdout and `P.A.err` to stderr, and exits with `P.A.code`
//! (else `P.code`, else 0).
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const TAILSCALE_IP: &str = "100.101.102.103";
pub const TAILSCALE_NAME: &str = "mac-one.tail1234.ts.net";

pub const RUNNING_STATUS: &str = r#"{
  "Version": "1.90.6-t1234",
  "TUN": true,
  "BackendState": "Running",
  "TailscaleIPs": ["100.101.102.103", "fd7a:115c:a1e0::1"],
  "Self": {
    "ID": "nABC",
    "HostName": "Mac One",
    "DNSName": "mac-one.tail1234.ts.net.",
    "OS": "macOS",
    "TailscaleIPs": ["100.101.102.103", "fd7a:115c:a1e0::1"],
    "Online": true
  },
  "Health": [],
  "MagicDNSSuffix": "tail1234.ts.net"
}"#;

const FAKE_SCRIPT: &str = r#"#!/bin/sh
name=$(basename "$0")
{
  printf '%s' "$name"
  for arg in "$@"; do printf ' %s' "$arg"; done
  printf '\n'
} >> "$FAKE_DIR/calls.log"
first="$1"
if [ -f "$FAKE_DIR/$name.$first.out" ]; then cat "$FAKE_DIR/$name.$first.out"
elif [ -f "$FAKE_DIR/$name.out" ]; then cat "$FAKE_DIR/$name.out"; fi
if [ -f "$FAKE_DIR/$name.$first.err" ]; then cat "$FAKE_DIR/$name.$first.err" >&2; fi
if [ -f "$FAKE_DIR/$name.$first.code" ]; then exit "$(cat "$FAKE_DIR/$name.$first.code")"; fi
if [ -f "$FAKE_DIR/$name.code" ]; then exit "$(cat "$FAKE_DIR/$name.code")"; fi
exit 0
"#;

/// A directory of fake programs and their recorded outputs.
pub struct Fakes {
    pub dir: tempfile::TempDir,
}

impl Fakes {
    /// Fakes of every program `styx` runs, describing a healthy Mac with Tailscale up.
    pub fn healthy() -> Self {
        let fakes = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        fs::create_dir(fakes.bin()).unwrap();

        for program in [
            "tailscale",
            "launchctl",
            "nomad",
            "consul",
            "vault",
            "sw_vers",
            "uname",
            "container",
        ] {
            fakes.install(program);
        }

        fakes.output("tailscale", RUNNING_STATUS);
        fakes.output("nomad", "Nomad v1.9.3\nBuildDate 2024-11-11T16:09:48Z\n");
        fakes.output("consul", "Consul v1.20.1\n");
        fakes.output("vault", "Vault v1.18.2 (abc), built 2024-11-20T11:24:56Z\n");
        fakes.output("sw_vers", "26.1\n");
        fakes.output("uname", "arm64\n");
        fakes.output("container", "container CLI version 1.2.2\n");

        // `launchctl print` of an unknown service exits 113.
        fakes.output_for("launchctl", "print", "", 113);
        fakes.output_for(
            "launchctl",
            "limit",
            "\tmaxfiles    256            unlimited\n",
            0,
        );
        fakes
    }

    pub fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    pub fn install(&self, program: &str) {
        let path = self.bin().join(program);
        fs::write(&path, FAKE_SCRIPT).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    pub fn remove(&self, program: &str) {
        fs::remove_file(self.bin().join(program)).unwrap();
    }

    pub fn output(&self, program: &str, stdout: &str) {
        fs::write(self.dir.path().join(format!("{program}.out")), stdout).unwrap();
    }

    pub fn error_for(&self, program: &str, first_arg: &str, stderr: &str) {
        fs::write(
            self.dir.path().join(format!("{program}.{first_arg}.err")),
            stderr,
        )
        .unwrap();
    }

    pub fn output_for(&self, program: &str, first_arg: &str, stdout: &str, code: i32) {
        fs::write(
            self.dir.path().join(format!("{program}.{first_arg}.out")),
            stdout,
        )
        .unwrap();
        fs::write(
            self.dir.path().join(format!("{program}.{first_arg}.code")),
            code.to_string(),
        )
        .unwrap();
    }

    /// Lines of `calls.log`: one argv per call.
    pub fn calls(&self) -> Vec<String> {
        fs::read_to_string(self.dir.path().join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Builds a `styx` command with these fakes first on PATH and `--prefix prefix`.
    pub fn styx(&self, prefix: &Path) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_styx"));
        command
            .env("PATH", format!("{}:/usr/bin:/bin", self.bin().display()))
            .env("FAKE_DIR", self.dir.path())
            .env("HOME", self.dir.path())
            .arg("--prefix")
            .arg(prefix);
        command
    }
}

/// Runs a command and returns its output, printing it for failing tests.
pub fn run(command: &mut Command) -> Output {
    let output = command.output().expect("styx runs");
    eprintln!("--- stdout\n{}", String::from_utf8_lossy(&output.stdout));
    eprintln!("--- stderr\n{}", String::from_utf8_lossy(&output.stderr));
    output
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
}

/// Lists the entries of `dir`, for "nothing was written" checks.
pub fn entries(dir: &Path) -> Vec<String> {
    let Ok(read) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = read
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Requests a fake API received, as `METHOD /path body`.
pub type RequestLog = Arc<Mutex<Vec<String>>>;

/// Starts an HTTPS server on 127.0.0.1 that serves `routes` (`"METHOD /path"`, JSON body)
/// with the certificate `name` of `prefix`, and returns its base URL and request log.
/// Routes listed in `chunked` are sent with chunked transfer encoding.
pub fn fake_api(
    prefix: &Path,
    name: &str,
    routes: Vec<(&'static str, String)>,
    chunked: &'static [&'static str],
) -> (String, RequestLog) {
    let chain = fs::read_to_string(prefix.join(format!("tls/{name}.pem"))).unwrap();
    let key = fs::read_to_string(prefix.join(format!("tls/{name}-key.pem"))).unwrap();
    let config = styx_launcher::tls::server_config(&chain, &key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = listener.local_addr().unwrap();
    let log = RequestLog::default();
    let requests = log.clone();

    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    continue;
                };

                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && tls.read(&mut byte).await.unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let mut words = head.split_whitespace();
                let route = format!("{} {}", words.next().unwrap_or("GET"), words.next().unwrap_or("/"));
                let length: usize = head
                    .lines()
                    .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                    .and_then(|value| value.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0u8; length];
                let _ = tls.read_exact(&mut body).await;
                requests
                    .lock()
                    .unwrap()
                    .push(format!("{route} {}", String::from_utf8_lossy(&body)).trim_end().to_owned());

                let reply = routes.iter().find(|(candidate, _)| *candidate == route).map(|(_, body)| body.clone());
                let response = match reply {
                    Some(body) if chunked.contains(&route.as_str()) => {
                        let (first, second) = body.split_at(body.len() / 2);
                        format!(
                            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\n\r\n",
                            first.len(),
                            second.len()
                        )
                    }
                    Some(body) => format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()),
                    None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_owned(),
                };
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            }
        });
    });
    (format!("https://{address}"), log)
}

/// Returns an HTTPS URL on a loopback port that nothing listens on.
pub fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    format!("https://{address}")
}

/// Appends an `[endpoints]` table to the state file of `prefix`.
pub fn set_endpoints(prefix: &Path, nomad: &str, consul: &str, vault: &str) {
    let state = prefix.join("styx.toml");
    let mut text = fs::read_to_string(&state).unwrap();
    text.push_str(&format!(
        "\n[endpoints]\nnomad = \"{nomad}\"\nconsul = \"{consul}\"\nvault = \"{vault}\"\n"
    ));
    fs::write(&state, text).unwrap();
}

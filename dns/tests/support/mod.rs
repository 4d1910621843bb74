//! Test fixtures: a real dnsmasq on a loopback port, zone files for it, and servers that are
//! dead (nothing listening) or silent (a socket that never answers).
//!
//! Every dnsmasq instance serves on its own port, logs each query it receives to a file in
//! its own temporary directory, and is killed when dropped.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Suffix of the MagicDNS-like zone.
pub const TAILNET: &str = "tail1234.ts.net";

/// Contents of a dnsmasq configuration: records and the TTL policy they are served with.
#[derive(Debug, Clone, Default)]
pub struct Zone {
    lines: Vec<String>,
    /// TTL of the records (dnsmasq `--local-ttl`, or `--auth-ttl` for an authoritative zone).
    ttl: u32,
    /// Serve this domain authoritatively, so negative answers carry an SOA whose minimum is
    /// `ttl`.
    auth_zone: Option<String>,
}

impl Zone {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds the Consul-like zone: `web.service.consul` with two addresses and two SRV records
    /// (ports 8080 and 8081, glue in the additional section), and two nodes, at TTL 0 as
    /// Consul serves them. Other names under `consul` are NXDOMAIN.
    pub fn consul() -> Self {
        Self::new()
            .host("web.service.consul", "10.0.0.1")
            .host("web.service.consul", "10.0.0.2")
            .host("node1.node.consul", "10.0.1.1")
            .host("node1.node.consul", "fd00::1")
            .host("node2.node.consul", "10.0.1.2")
            .srv("web.service.consul", "node1.node.consul", 8080)
            .srv("web.service.consul", "node2.node.consul", 8081)
            .local("consul")
    }

    /// Builds the MagicDNS-like zone: `mac-a.<tailnet>.ts.net` with an IPv4 and an IPv6 address.
    pub fn magicdns() -> Self {
        Self::new()
            .host(&format!("mac-a.{TAILNET}"), "100.64.0.1")
            .host(&format!("mac-a.{TAILNET}"), "fd7a:115c:a1e0::1")
            .local("ts.net")
    }

    pub fn host(mut self, name: &str, addr: &str) -> Self {
        self.lines.push(format!("host-record={name},{addr}"));
        self
    }

    /// Adds an SRV record at priority 1, weight 1.
    pub fn srv(self, name: &str, target: &str, port: u16) -> Self {
        self.srv_at_priority(name, target, port, 1)
    }

    /// Adds an SRV record at `priority` (lower numbers are tried first), weight 1.
    pub fn srv_at_priority(mut self, name: &str, target: &str, port: u16, priority: u16) -> Self {
        self.lines
            .push(format!("srv-host={name},{target},{port},{priority},1"));
        self
    }

    /// Makes dnsmasq return NXDOMAIN for unknown names under `domain` instead of REFUSED.
    pub fn local(mut self, domain: &str) -> Self {
        self.lines.push(format!("local=/{domain}/"));
        self
    }

    pub fn ttl(mut self, ttl: u32) -> Self {
        self.ttl = ttl;
        self
    }

    pub fn authoritative(mut self, domain: &str) -> Self {
        self.auth_zone = Some(domain.to_owned());
        self
    }

    pub fn merge(mut self, other: Zone) -> Self {
        self.lines.extend(other.lines);
        self
    }

    fn config(&self) -> String {
        let mut text = String::new();
        for line in &self.lines {
            let _ = writeln!(text, "{line}");
        }
        match &self.auth_zone {
            Some(zone) => {
                let _ = writeln!(
                    text,
                    "auth-zone={zone}\nauth-server=ns.{zone},127.0.0.1\nauth-ttl={}",
                    self.ttl
                );
            }
            None => {
                let _ = writeln!(text, "local-ttl={}", self.ttl);
            }
        }
        text
    }
}

/// A dnsmasq child process serving a [`Zone`] on `127.0.0.1:<port>`, UDP and TCP.
pub struct Dnsmasq {
    child: Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Dnsmasq {
    /// Starts dnsmasq on a free port and waits until it accepts TCP connections.
    pub fn start(zone: &Zone) -> Self {
        // Another test, or a resolver's random UDP source port, can take the port between
        // `free_port` and dnsmasq's bind, so a failed start is retried on a new port.
        for _ in 0..4 {
            if let Ok(server) = Self::try_start_on(free_port(), zone) {
                return server;
            }
        }
        Self::start_on(free_port(), zone)
    }

    /// Starts dnsmasq on `port`, for example to replace an instance with a new zone.
    pub fn start_on(port: u16, zone: &Zone) -> Self {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match Self::try_start_on(port, zone) {
                Ok(server) => return server,
                Err(error) if attempts < 5 => eprintln!("{error}; retrying"),
                Err(error) => panic!("{error}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn try_start_on(port: u16, zone: &Zone) -> Result<Self, String> {
        let dir = tempfile::tempdir().expect("create a temporary directory for dnsmasq");
        let config = dir.path().join("dnsmasq.conf");
        std::fs::write(&config, zone.config()).expect("write the dnsmasq configuration");
        let log = dir.path().join("queries.log");

        // dnsmasq serves each TCP connection in a forked child, which outlives a killed parent
        // and keeps answering from the old zone. A process group of its own lets `Drop` kill
        // them all.
        let child = Command::new(dnsmasq_path())
            .process_group(0)
            .arg("--keep-in-foreground")
            .arg(format!("--port={port}"))
            .arg("--listen-address=127.0.0.1")
            .arg("--bind-interfaces")
            .arg("--no-resolv")
            .arg("--no-hosts")
            .arg("--pid-file=")
            .arg("--user=root")
            .arg("--log-queries")
            .arg(format!("--log-facility={}", log.display()))
            .arg(format!("--conf-file={}", config.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start dnsmasq");

        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut server = Self { child, addr, dir };
        server.wait_ready()?;
        Ok(server)
    }

    /// Stops this instance and starts a new one with `zone` on the same port.
    pub fn restart(self, zone: &Zone) -> Self {
        let port = self.addr.port();
        drop(self);

        // The killed TCP children hold the inherited listening socket until the kernel has
        // torn them down. The new instance cannot bind the port before that.
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpListener::bind(("127.0.0.1", port)).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        Self::start_on(port, zone)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("poll dnsmasq") {
                return Err(format!(
                    "dnsmasq exited with {status} before serving on {}",
                    self.addr
                ));
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("dnsmasq did not start serving on {} within 10 s", self.addr);
    }

    /// Number of queries for `name` and `record_type` (such as "A" or "SRV") that dnsmasq has
    /// logged so far.
    pub fn queries(&self, name: &str, record_type: &str) -> usize {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let query = format!("query[{record_type}] {name} from");
        let auth = format!("auth[{record_type}] {name} from");
        log.lines()
            .filter(|line| line.contains(&query) || line.contains(&auth))
            .count()
    }

    /// Waits until dnsmasq has logged `expected` queries for `name`, then returns the count
    /// (which may exceed `expected`). dnsmasq writes its log asynchronously.
    pub fn wait_for_queries(&self, name: &str, record_type: &str, expected: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let count = self.queries(name, record_type);
            if count >= expected || Instant::now() >= deadline {
                return count;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("queries.log")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        // The group id is the child's pid (`process_group(0)`); `kill -KILL -- -PGID` signals
        // the group, which holds only this dnsmasq and its TCP children.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// dnsmasq from PATH or /usr/sbin.
fn dnsmasq_path() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("dnsmasq"));
    let candidates = on_path.chain([PathBuf::from("/usr/sbin/dnsmasq")]);
    for candidate in candidates {
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("dnsmasq not found on PATH or in /usr/sbin: install the Debian package dnsmasq-base");
}

/// Returns a loopback port that is free for both UDP and TCP at the time of the call.
pub fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind a loopback UDP socket");
        let port = udp.local_addr().expect("local address").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Returns a loopback address with nothing listening: UDP queries are lost (or rejected by ICMP) and
/// TCP connections are refused.
pub fn dead_server() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A UDP socket that receives queries and never answers; counts what it received.
pub struct SilentServer {
    pub addr: SocketAddr,
    received: Arc<AtomicUsize>,
    socket: Arc<UdpSocket>,
}

impl SilentServer {
    pub fn start() -> Self {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("bind a loopback UDP socket"));
        let addr = socket.local_addr().expect("local address");
        let received = Arc::new(AtomicUsize::new(0));

        let (reader, counter) = (socket.clone(), received.clone());
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            // Ends when the test process exits; a blocked read holds nothing but the socket.
            while reader.recv_from(&mut buffer).is_ok() {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        Self {
            addr,
            received,
            socket,
        }
    }

    pub fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }
}

/// Installs a tracing subscriber that prints to the test output when RUST_LOG is set.
pub fn trace_init() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

//! The built-in images. Each runs as this binary in image mode, on the container's
//! address from `CONTAINER_SIM_IP`.
//!
//! | image | arguments | behaviour |
//! |---|---|---|
//! | `styx/http-env` | `[port=8080]` | HTTP server that returns its environment for every request |
//! | `styx/echo` | `[port=7]` | TCP echo |
//! | `styx/exit` | `[code=0] [delay_ms=0]` | exits with `code` after `delay_ms` |
//! | `styx/ignore-term` | | prints `ready`, then ignores SIGTERM until killed |
//! | `styx/chatter` | `[interval_ms=50]` | writes `out N` to stdout and `err N` to stderr |
//! | `styx/memory-grower` | `[step_mib=8] [interval_ms=50]` | allocates memory until killed |

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::time::Duration;

/// Environment variable with the container's IPv4 address.
pub const IP_KEY: &str = "CONTAINER_SIM_IP";

/// Environment variable with the container's state folder, by which tests find the
/// image processes of their own simulator.
pub const CONTAINER_KEY: &str = "CONTAINER_SIM_CONTAINER";

const IMAGES: [&str; 6] = [
    "http-env",
    "echo",
    "exit",
    "ignore-term",
    "chatter",
    "memory-grower",
];

/// Returns the built-in image of a reference such as `styx/echo` or
/// `docker.io/styx/echo:latest`, and its normalized reference.
pub fn lookup(reference: &str) -> Option<(&'static str, String)> {
    let without_registry = reference.strip_prefix("docker.io/").unwrap_or(reference);
    let without_tag = without_registry
        .rsplit_once(':')
        .map_or(without_registry, |(name, _)| name);
    let name = without_tag.strip_prefix("styx/")?;
    let image = IMAGES.into_iter().find(|image| *image == name)?;
    Some((image, format!("docker.io/styx/{image}:latest")))
}

/// Runs `image` with `args` until it exits; returns the exit code.
pub fn run(image: &str, args: &[String]) -> io::Result<i32> {
    let number = |index: usize, default: u64| -> u64 {
        args.get(index)
            .and_then(|arg| arg.parse().ok())
            .unwrap_or(default)
    };
    match image {
        "http-env" => serve(u16::try_from(number(0, 8080)).unwrap_or(8080), http_env),
        "echo" => serve(u16::try_from(number(0, 7)).unwrap_or(7), echo),
        "exit" => {
            std::thread::sleep(Duration::from_millis(number(1, 0)));
            Ok(i32::try_from(number(0, 0)).unwrap_or(1))
        }
        "ignore-term" => ignore_term(),
        "chatter" => chatter(Duration::from_millis(number(0, 50))),
        "memory-grower" => grow_memory(number(0, 8), Duration::from_millis(number(1, 50))),
        other => Err(io::Error::other(format!("unknown image {other}"))),
    }
}

fn serve(port: u16, handler: fn(TcpStream) -> io::Result<()>) -> io::Result<i32> {
    let ip: IpAddr = std::env::var(IP_KEY)
        .map_err(|_| io::Error::other(format!("{IP_KEY} is not set")))?
        .parse()
        .map_err(io::Error::other)?;
    let listener = TcpListener::bind((ip, port))?;
    for stream in listener.incoming() {
        let stream = stream?;
        std::thread::spawn(move || handler(stream));
    }
    Ok(0)
}

fn http_env(stream: TcpStream) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }

    let mut variables: Vec<(String, String)> = std::env::vars()
        .filter(|(key, _)| key != IP_KEY && key != CONTAINER_KEY)
        .collect();
    variables.sort();
    let body: String = variables
        .iter()
        .map(|(key, value)| format!("{key}={value}\n"))
        .collect();
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

fn echo(mut stream: TcpStream) -> io::Result<()> {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let read = stream.read(&mut buffer)?;
        if read == 0 {
            return stream.shutdown(std::net::Shutdown::Write);
        }
        stream.write_all(&buffer[..read])?;
    }
}

fn ignore_term() -> io::Result<i32> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // Installing a handler replaces the default action, which would end the process.
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        println!("ready");
        loop {
            terminate.recv().await;
            println!("ignoring SIGTERM");
        }
    })
}

fn chatter(interval: Duration) -> io::Result<i32> {
    for sequence in 0u64.. {
        writeln!(io::stdout(), "out {sequence}")?;
        writeln!(io::stderr(), "err {sequence}")?;
        std::thread::sleep(interval);
    }
    Ok(0)
}

fn grow_memory(step_mib: u64, interval: Duration) -> io::Result<i32> {
    let step = usize::try_from(step_mib * 1024 * 1024).map_err(io::Error::other)?;
    let mut chunks = Vec::new();
    loop {
        // Filled with ones so every page is touched and counted in the RSS.
        chunks.push(vec![1u8; step]);
        std::thread::sleep(interval);
    }
}

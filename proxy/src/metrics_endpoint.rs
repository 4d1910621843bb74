//! The HTTP endpoint that serves the Prometheus page at `GET /metrics`.
//!
//! It accepts through the same [`Acceptor`] as the proxy listeners, so failed accepts
//! (EMFILE above all) are counted under `listener="metrics"` and backed off instead of
//! spinning. It speaks just enough HTTP/1.1 for a scraper: one request per connection,
//! read with a timeout and a size cap, then a response with `Content-Length` and
//! `Connection: close`. It is not a general HTTP server: no keep-alive, no chunked
//! bodies, no TLS.
//!
//! Connections that send nothing must not keep a scraper out. Every connection is
//! accepted at once, and at most [`MAX_PENDING_REQUESTS`] may wait for their request
//! head. When one more arrives, the oldest waiting connection is closed. Only rendering
//! the page is limited to a few at a time.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::listener::Acceptor;

/// Value of the `listener` label on the endpoint's own accept errors.
/// NOTE: a proxy listener configured with this name shares the series.
pub const METRICS_LISTENER: &str = "metrics";

/// Maximum size of a request head. Larger requests get 431.
const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// Time a client has to send its whole request head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Most connections waiting for their request head at once. A scraper gets through
/// unless this many new connections arrive in the time it takes to send its request.
const MAX_PENDING_REQUESTS: usize = 64;

/// Pages rendered at once; further requests wait for a turn.
const MAX_CONCURRENT_RENDERS: usize = 4;

/// Serves `handle`'s page on `listener` until the runtime ends.
pub(crate) async fn serve(listener: TcpListener, handle: PrometheusHandle) {
    let renders = Arc::new(Semaphore::new(MAX_CONCURRENT_RENDERS));
    let pending = Arc::new(Mutex::new(Pending::default()));
    let mut acceptor = Acceptor::new(METRICS_LISTENER);
    // The endpoint lives as long as the process, so nothing cancels this token.
    let never = CancellationToken::new();
    loop {
        let Some((stream, peer)) = acceptor.accept(&listener, &never).await else {
            return;
        };
        let admission = Admission::new(&pending);

        let handle = handle.clone();
        let renders = Arc::clone(&renders);
        tokio::spawn(async move {
            if let Err(error) = respond(stream, admission, &renders, &handle).await {
                tracing::debug!(%peer, %error, "Failed to respond to a metrics request");
            }
        });
    }
}

/// Reads one request from `stream` and writes the response.
async fn respond(
    mut stream: TcpStream,
    admission: Admission,
    renders: &Semaphore,
    handle: &PrometheusHandle,
) -> std::io::Result<()> {
    let read = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream));
    let head = tokio::select! {
        () = admission.evicted.cancelled() => {
            return Err(std::io::Error::other(
                "closed before its request arrived, to make room for a newer connection",
            ));
        }
        head = read => match head {
            Ok(head) => head?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "timed out reading the request",
                ));
            }
        },
    };
    drop(admission);

    let response = match head {
        None => response(
            431,
            "Request Header Fields Too Large",
            "request too large\n",
        ),
        Some(head) => {
            let _turn = renders
                .acquire()
                .await
                .expect("the render semaphore is never closed");
            route(&head, handle)
        }
    };
    stream.write_all(&response).await?;
    stream.shutdown().await
}

/// Connections still waiting for their request head, oldest first.
#[derive(Debug, Default)]
struct Pending {
    next_id: u64,
    waiting: VecDeque<(u64, CancellationToken)>,
}

/// One connection's place among the [`Pending`] ones. Dropping it gives the place up.
struct Admission {
    id: u64,
    /// Cancelled when a newer connection needs the place.
    evicted: CancellationToken,
    pending: Arc<Mutex<Pending>>,
}

impl Admission {
    /// Takes a place for a new connection, closing the oldest waiting connection first
    /// when all [`MAX_PENDING_REQUESTS`] places are taken.
    fn new(pending: &Arc<Mutex<Pending>>) -> Admission {
        let mut state = pending.lock().expect("pending lock is not poisoned");
        if state.waiting.len() >= MAX_PENDING_REQUESTS
            && let Some((_, oldest)) = state.waiting.pop_front()
        {
            oldest.cancel();
        }

        let id = state.next_id;
        state.next_id += 1;
        let evicted = CancellationToken::new();
        state.waiting.push_back((id, evicted.clone()));
        Admission {
            id,
            evicted,
            pending: Arc::clone(pending),
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut state = self.pending.lock().expect("pending lock is not poisoned");
        if let Some(index) = state.waiting.iter().position(|(id, _)| *id == self.id) {
            state.waiting.remove(index);
        }
    }
}

/// Reads until the blank line that ends the request head. Returns `None` when the head
/// exceeds [`MAX_REQUEST_BYTES`].
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&chunk[..read]);
        if head.windows(4).any(|window| window == b"\r\n\r\n") {
            return Ok(Some(String::from_utf8_lossy(&head).into_owned()));
        }
        if head.len() > MAX_REQUEST_BYTES {
            return Ok(None);
        }
    }
}

/// Returns the response to the request whose head is `head`.
fn route(head: &str, handle: &PrometheusHandle) -> Vec<u8> {
    let request_line = head.lines().next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next());
    let path = target.map(|target| target.split('?').next().unwrap_or_default());

    match (method, path) {
        ("GET", Some("/metrics")) => {
            let body = handle.render();
            let mut page = response_head(200, "OK", "text/plain; version=0.0.4", body.len());
            page.extend_from_slice(body.as_bytes());
            page
        }
        (_, Some("/metrics")) => response(405, "Method Not Allowed", "only GET is allowed\n"),
        (_, Some(_)) => response(404, "Not Found", "not found, try /metrics\n"),
        (_, None) => response(400, "Bad Request", "invalid request line\n"),
    }
}

fn response(status: u16, reason: &str, body: &str) -> Vec<u8> {
    let mut bytes = response_head(status, reason, "text/plain; charset=utf-8", body.len());
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

fn response_head(status: u16, reason: &str, content_type: &str, length: usize) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;

    fn route_text(head: &str) -> String {
        let handle = PrometheusBuilder::new().build_recorder().handle();
        String::from_utf8(route(head, &handle)).unwrap()
    }

    #[test]
    fn metrics_path_served_as_text() {
        let response = route_text("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.contains("Content-Type: text/plain; version=0.0.4\r\n"));
        assert!(response.contains("Content-Length: "));
        assert!(response.contains("Connection: close\r\n"));
    }

    #[test]
    fn other_requests_rejected() {
        let cases = [
            ("GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 404 "),
            ("GET /metricsx HTTP/1.1\r\n\r\n", "HTTP/1.1 404 "),
            ("POST /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 405 "),
            ("garbage\r\n\r\n", "HTTP/1.1 400 "),
        ];
        for (head, status) in cases {
            let response = route_text(head);
            assert!(response.starts_with(status), "{head:?} got {response}");
        }
    }
}

//! The HTTP endpoint that serves the Prometheus page at `GET /metrics`.
//!
//! It accepts through the same [`Acceptor`] as the proxy listeners, so failed accepts
//! (EMFILE above all) are counted under `listener="metrics"` and backed off instead of
//! spinning. It speaks just enough HTTP/1.1 for a scraper: one request per connection,
//! read with a timeout and a size cap, then a response with `Content-Length` and
//! `Connection: close`. It is not a general HTTP server: no keep-alive, no chunked
//! bodies, no TLS.

use std::sync::Arc;
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

/// Scrapes served at once; further clients wait in the listen backlog.
const MAX_CONCURRENT_SCRAPES: usize = 4;

/// Serves `handle`'s page on `listener` until the runtime ends.
pub(crate) async fn serve(listener: TcpListener, handle: PrometheusHandle) {
    let scrapes = Arc::new(Semaphore::new(MAX_CONCURRENT_SCRAPES));
    let mut acceptor = Acceptor::new(METRICS_LISTENER);
    // The endpoint lives as long as the process, so nothing cancels this token.
    let never = CancellationToken::new();
    loop {
        let permit = scrapes
            .clone()
            .acquire_owned()
            .await
            .expect("the scrape semaphore is never closed");
        let Some((stream, peer)) = acceptor.accept(&listener, &never).await else {
            return;
        };

        let handle = handle.clone();
        tokio::spawn(async move {
            if let Err(error) = respond(stream, &handle).await {
                tracing::debug!(%peer, %error, "Failed to respond to a metrics request");
            }
            drop(permit);
        });
    }
}

/// Reads one request from `stream` and writes the response.
async fn respond(mut stream: TcpStream, handle: &PrometheusHandle) -> std::io::Result<()> {
    let head = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "timed out reading the request",
            ));
        }
    };

    let response = match head {
        None => response(
            431,
            "Request Header Fields Too Large",
            "request too large\n",
        ),
        Some(head) => route(&head, handle),
    };
    stream.write_all(&response).await?;
    stream.shutdown().await
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

//! A small HTTPS/1.1 client for the Nomad, Consul and Vault HTTP APIs.
//!
//! One request per connection (`Connection: close`), a bounded response size, and a
//! timeout over the whole exchange. Bodies may be sized by `Content-Length`, chunked, or
//! end at connection close. This is not a general client: no redirects, no proxies, no
//! keep-alive.

use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Maximum response size accepted, headers included, in bytes.
const MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;

/// Failure of an HTTPS request.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("invalid URL {url:?}: expected https://HOST:PORT")]
    InvalidUrl { url: String },
    #[error("failed to connect to {address}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("request to {url} timed out after {} s", timeout.as_secs())]
    TimedOut { url: String, timeout: Duration },
    #[error("invalid HTTP response from {url}: {message}")]
    InvalidResponse { url: String, message: String },
    #[error("{url} returned HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("invalid JSON from {url}")]
    Json {
        url: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A response: status code and body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Client of one HTTPS base URL such as `https://127.0.0.1:8501`.
#[derive(Clone)]
pub struct HttpsClient {
    host: String,
    port: u16,
    base_url: String,
    connector: TlsConnector,
    timeout: Duration,
}

impl HttpsClient {
    pub fn new(base_url: &str, config: ClientConfig, timeout: Duration) -> Result<Self, HttpError> {
        let invalid = || HttpError::InvalidUrl {
            url: base_url.to_owned(),
        };
        let authority = base_url
            .strip_prefix("https://")
            .ok_or_else(invalid)?
            .trim_end_matches('/');
        let (host, port) = authority.rsplit_once(':').ok_or_else(invalid)?;
        let port: u16 = port.parse().map_err(|_| invalid())?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(invalid());
        }

        Ok(Self {
            host,
            port,
            base_url: base_url.trim_end_matches('/').to_owned(),
            connector: TlsConnector::from(Arc::new(config)),
            timeout,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Sends `GET path` and decodes a 2xx JSON body.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, HttpError> {
        let response = self.request("GET", path, None).await?;
        self.decode(path, response)
    }

    /// Sends `method path` with a JSON body and decodes a 2xx JSON response.
    pub async fn send_json<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, HttpError> {
        let bytes = serde_json::to_vec(body).expect("a JSON value always serializes");
        let response = self.request(method, path, Some(&bytes)).await?;
        self.decode(path, response)
    }

    fn decode<T: DeserializeOwned>(&self, path: &str, response: Response) -> Result<T, HttpError> {
        let url = format!("{}{path}", self.base_url);
        if !(200..300).contains(&response.status) {
            let body = String::from_utf8_lossy(&response.body);
            let body: String = body.trim().chars().take(200).collect();
            return Err(HttpError::Status {
                url,
                status: response.status,
                body,
            });
        }
        serde_json::from_slice(&response.body).map_err(|source| HttpError::Json { url, source })
    }

    /// Sends one request and returns the response, whatever its status.
    ///
    /// # Errors
    ///
    /// Connecting, the TLS handshake, or the exchange fails or exceeds the timeout, or
    /// the response is not valid HTTP/1.1.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, HttpError> {
        let url = format!("{}{path}", self.base_url);
        match tokio::time::timeout(self.timeout, self.exchange(method, path, body)).await {
            Ok(result) => result,
            Err(_) => Err(HttpError::TimedOut {
                url,
                timeout: self.timeout,
            }),
        }
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, HttpError> {
        let address = format!("{}:{}", self.host, self.port);
        let connect_error = |source| HttpError::Connect {
            address: address.clone(),
            source,
        };

        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(connect_error)?;
        let server_name = ServerName::try_from(self.host.clone())
            .map_err(|error| connect_error(std::io::Error::other(error)))?;
        let mut tls = self
            .connector
            .connect(server_name, tcp)
            .await
            .map_err(connect_error)?;

        let body = body.unwrap_or_default();
        let host_header = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            address.clone()
        };
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: styx/{}\r\n\
             Accept: application/json\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            body.len()
        );
        tls.write_all(head.as_bytes())
            .await
            .map_err(connect_error)?;
        tls.write_all(body).await.map_err(connect_error)?;
        tls.flush().await.map_err(connect_error)?;

        let mut raw = Vec::new();
        let read = (&mut tls)
            .take(MAX_RESPONSE_BYTES)
            .read_to_end(&mut raw)
            .await;
        match read {
            Ok(_) => {}
            // Some servers close without a TLS close_notify. The framing below still
            // detects a truncated body.
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
            Err(error) => return Err(connect_error(error)),
        }

        parse_response(&raw).map_err(|message| HttpError::InvalidResponse {
            url: format!("{}{path}", self.base_url),
            message,
        })
    }
}

/// Parses a complete HTTP/1.1 response read until connection close.
pub fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(raw) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return Err("the response ended inside its headers".to_owned());
        }
        Err(error) => return Err(error.to_string()),
    };
    let status = response.code.ok_or("missing status code")?;

    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|header| header.name.eq_ignore_ascii_case(name))
            .map(|header| {
                String::from_utf8_lossy(header.value)
                    .trim()
                    .to_ascii_lowercase()
            })
    };
    let rest = &raw[head_len..];

    let body = if header("transfer-encoding").is_some_and(|value| value.contains("chunked")) {
        decode_chunked(rest)?
    } else if let Some(length) = header("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| format!("invalid Content-Length {length:?}"))?;
        if rest.len() < length {
            return Err(format!("body truncated: {} of {length} bytes", rest.len()));
        }
        rest[..length].to_vec()
    } else {
        rest.to_vec()
    };

    Ok(Response { status, body })
}

fn decode_chunked(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = find_crlf(data).ok_or("chunk size line is incomplete")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("invalid chunk size {size_text:?}"))?;
        data = &data[line_end + 2..];

        if size == 0 {
            return Ok(body);
        }
        if data.len() < size + 2 {
            return Err("chunk is truncated".to_owned());
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

fn find_crlf(data: &[u8]) -> Option<usize> {
    data.windows(2).position(|window| window == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_body_is_cut() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n\"ok\"extra";

        let response = parse_response(raw).unwrap();

        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"\"ok\"");
    }

    #[test]
    fn chunked_body_is_joined() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n[1,\r\n2\r\n2]\r\n0\r\n\r\n";

        let response = parse_response(raw).unwrap();

        assert_eq!(response.body, b"[1,2]");
    }

    #[test]
    fn truncated_body_is_an_error() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";

        let error = parse_response(raw).unwrap_err();

        assert!(error.contains("truncated"), "{error}");
    }
}

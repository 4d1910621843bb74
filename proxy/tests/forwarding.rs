//! Forwarding behaviour on real loopback sockets, every test run once per engine.

mod common;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use styx_proxy::EngineChoice;
use styx_proxy::metrics as names;
use styx_proxy::proxy_protocol::ProxyProtocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Runs each listed test once with `EngineChoice::Splice` and once with
/// `EngineChoice::Copy`, as `splice::name` and `copy::name`.
macro_rules! for_each_engine {
    ($($test:ident),* $(,)?) => {
        mod splice {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(styx_proxy::EngineChoice::Splice, concat!("splice-", stringify!($test))).await;
                }
            )*
        }
        mod copy {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(styx_proxy::EngineChoice::Copy, concat!("copy-", stringify!($test))).await;
                }
            )*
        }
    };
}

for_each_engine!(
    bulk_both_ways_byte_exact,
    client_half_close_gets_full_response,
    server_half_close_then_client_upload,
    client_reset_reaches_upstream,
    upstream_reset_reaches_client,
    refused_upstream_closes_client,
    connection_limit_holds_extra_client,
    idle_connection_closed,
    drain_lets_open_connection_finish,
    drain_deadline_resets_connection,
    pooled_closed_connection_discarded,
    proxy_protocol_v1_header,
    proxy_protocol_v2_header_on_pooled,
    metrics_match_traffic,
);

#[cfg(target_os = "linux")]
#[test]
fn splice_available_on_linux() {
    assert!(styx_proxy::engine::splice_available());
    assert_eq!(EngineChoice::Auto.resolve(), styx_proxy::Engine::Splice);
    assert_eq!(EngineChoice::Copy.resolve(), styx_proxy::Engine::Copy);
}

const BULK_BYTES: usize = 24 << 20;

/// Sends 24 MiB each way at the same time and checks every byte on both ends.
async fn bulk_both_ways_byte_exact(engine: EngineChoice, name: &str) {
    let (checked_tx, mut checked_rx) = mpsc::unbounded_channel();
    let upstream = spawn_upstream(move |stream| {
        let checked_tx = checked_tx.clone();
        async move {
            let (mut reader, mut writer) = stream.into_split();
            let send = tokio::spawn(async move {
                writer.write_all(&pattern(2, BULK_BYTES)).await.unwrap();
                writer.shutdown().await.unwrap();
                writer
            });
            let mut received = Vec::new();
            reader.read_to_end(&mut received).await.unwrap();
            checked_tx.send(received == pattern(1, BULK_BYTES)).unwrap();
            drop(send.await.unwrap());
        }
    })
    .await;
    let proxy = Proxy::start(listener(name, upstream, engine)).await;

    let client = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut reader, mut writer) = client.into_split();
    let send = tokio::spawn(async move {
        writer.write_all(&pattern(1, BULK_BYTES)).await.unwrap();
        writer.shutdown().await.unwrap();
        writer
    });
    let mut received = Vec::new();
    within("the bulk download", reader.read_to_end(&mut received))
        .await
        .unwrap();
    let _writer = within("the bulk upload", send).await.unwrap();

    assert_eq!(received.len(), BULK_BYTES);
    assert!(
        received == pattern(2, BULK_BYTES),
        "download differs from the pattern"
    );
    let upload_matches = within("the upstream check", checked_rx.recv())
        .await
        .unwrap();
    assert!(upload_matches, "upload differs from the pattern");
    proxy.stop().await;
}

/// Checks that when the client sends a request and shuts down writing, the whole
/// response, which the upstream sends only after that FIN, reaches the client.
async fn client_half_close_gets_full_response(engine: EngineChoice, name: &str) {
    let upstream = spawn_upstream(|mut stream| async move {
        let mut request = Vec::new();
        stream.read_to_end(&mut request).await.unwrap();
        assert_eq!(request, b"request");
        stream.write_all(&pattern(3, 4 << 20)).await.unwrap();
        stream.shutdown().await.unwrap();
    })
    .await;
    let proxy = Proxy::start(listener(name, upstream, engine)).await;

    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client.write_all(b"request").await.unwrap();
    client.shutdown().await.unwrap();
    let mut response = Vec::new();
    within("the response", client.read_to_end(&mut response))
        .await
        .unwrap();

    assert_eq!(response.len(), 4 << 20);
    assert!(
        response == pattern(3, 4 << 20),
        "response differs from the pattern"
    );
    proxy.stop().await;
}

/// The upstream sends a greeting and shuts down writing first; the client then
/// uploads, and the upstream must receive every byte.
async fn server_half_close_then_client_upload(engine: EngineChoice, name: &str) {
    let (received_tx, mut received_rx) = mpsc::unbounded_channel();
    let upstream = spawn_upstream(move |mut stream| {
        let received_tx = received_tx.clone();
        async move {
            stream.write_all(b"greeting").await.unwrap();
            stream.shutdown().await.unwrap();
            let mut upload = Vec::new();
            stream.read_to_end(&mut upload).await.unwrap();
            received_tx.send(upload).unwrap();
        }
    })
    .await;
    let proxy = Proxy::start(listener(name, upstream, engine)).await;

    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    let mut greeting = Vec::new();
    within("the greeting and EOF", client.read_to_end(&mut greeting))
        .await
        .unwrap();
    assert_eq!(greeting, b"greeting");
    client.write_all(&pattern(4, 4 << 20)).await.unwrap();
    client.shutdown().await.unwrap();

    let upload = within("the upload", received_rx.recv()).await.unwrap();
    assert_eq!(upload.len(), 4 << 20);
    assert!(
        upload == pattern(4, 4 << 20),
        "upload differs from the pattern"
    );
    proxy.stop().await;
}

/// A client reset must arrive at the upstream as ECONNRESET, not as a clean EOF.
async fn client_reset_reaches_upstream(engine: EngineChoice, name: &str) {
    let (outcome_tx, mut outcome_rx) = mpsc::unbounded_channel();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let upstream = spawn_upstream(move |mut stream| {
        let (outcome_tx, ready_tx) = (outcome_tx.clone(), ready_tx.clone());
        async move {
            let mut first = [0u8; 5];
            stream.read_exact(&mut first).await.unwrap();
            ready_tx.send(()).unwrap();
            let mut rest = Vec::new();
            outcome_tx
                .send(
                    stream
                        .read_to_end(&mut rest)
                        .await
                        .map_err(|error| error.kind()),
                )
                .unwrap();
        }
    })
    .await;
    let proxy = Proxy::start(listener(name, upstream, engine)).await;

    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client.write_all(b"hello").await.unwrap();
    within("the upstream to read", ready_rx.recv())
        .await
        .unwrap();
    reset(client);

    let outcome = within("the upstream read outcome", outcome_rx.recv())
        .await
        .unwrap();
    assert_eq!(outcome, Err(io::ErrorKind::ConnectionReset));
    let resets = wait_for_metric(
        names::RESETS_TOTAL,
        &[("listener", name), ("side", "client")],
        1.0,
    )
    .await;
    assert_eq!(resets, Some(1.0));
    proxy.stop().await;
}

/// An upstream reset must arrive at the client as ECONNRESET, not as a clean EOF.
async fn upstream_reset_reaches_client(engine: EngineChoice, name: &str) {
    let upstream = spawn_upstream(|mut stream| async move {
        let mut first = [0u8; 5];
        stream.read_exact(&mut first).await.unwrap();
        stream.write_all(b"partial").await.unwrap();
        reset(stream);
    })
    .await;
    let proxy = Proxy::start(listener(name, upstream, engine)).await;

    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client.write_all(b"hello").await.unwrap();
    let mut received = Vec::new();
    let outcome = within("the client read outcome", client.read_to_end(&mut received)).await;

    assert_eq!(
        outcome.map_err(|error| error.kind()),
        Err(io::ErrorKind::ConnectionReset)
    );
    let resets = wait_for_metric(
        names::RESETS_TOTAL,
        &[("listener", name), ("side", "upstream")],
        1.0,
    )
    .await;
    assert_eq!(resets, Some(1.0));
    proxy.stop().await;
}

/// Checks that a refused upstream connect resets the client at once and is counted.
async fn refused_upstream_closes_client(engine: EngineChoice, name: &str) {
    let proxy = Proxy::start(listener(name, closed_port(), engine)).await;

    // The reset can arrive before the connect has reported success, so it may show up
    // as the connect's result or as the first read's.
    let outcome = within("the client to be closed", async {
        let mut client = TcpStream::connect(proxy.addr).await?;
        let mut buffer = [0u8; 16];
        client.read(&mut buffer).await
    })
    .await;

    assert_eq!(
        outcome.map_err(|error| error.kind()),
        Err(io::ErrorKind::ConnectionReset)
    );
    let labels = [("listener", name), ("reason", "refused")];
    assert_eq!(
        wait_for_metric(names::UPSTREAM_CONNECT_ERRORS_TOTAL, &labels, 1.0).await,
        Some(1.0)
    );
    let labels = [("listener", name), ("result", "connect_failed")];
    assert_eq!(
        wait_for_metric(names::CONNECTIONS_TOTAL, &labels, 1.0).await,
        Some(1.0)
    );
    proxy.stop().await;
}

/// With a limit of two, a third client is not served until one of the two leaves.
async fn connection_limit_holds_extra_client(engine: EngineChoice, name: &str) {
    let upstream = spawn_echo().await;
    let mut config = listener(name, upstream, engine);
    config.max_connections = 2;
    let proxy = Proxy::start(config).await;

    let mut first = TcpStream::connect(proxy.addr).await.unwrap();
    let mut second = TcpStream::connect(proxy.addr).await.unwrap();
    round_trip(&mut first, b"one").await;
    round_trip(&mut second, b"two").await;

    // The kernel completes the third handshake, but the proxy does not accept it.
    let mut third = TcpStream::connect(proxy.addr).await.unwrap();
    third.write_all(b"three").await.unwrap();
    let mut echoed = [0u8; 5];
    let early =
        tokio::time::timeout(Duration::from_millis(300), third.read_exact(&mut echoed)).await;
    assert!(
        early.is_err(),
        "third client was served while two were open"
    );

    drop(first);
    within("the third echo", third.read_exact(&mut echoed))
        .await
        .unwrap();
    assert_eq!(&echoed, b"three");
    round_trip(&mut second, b"still").await;
    drop((second, third));
    proxy.stop().await;
}

/// Checks that a connection with no traffic is closed after the idle timeout and
/// counted.
async fn idle_connection_closed(engine: EngineChoice, name: &str) {
    let upstream = spawn_echo().await;
    let mut config = listener(name, upstream, engine);
    config.idle_timeout = Some(Duration::from_millis(300));
    let proxy = Proxy::start(config).await;

    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    // Taken before the last byte moves, so the proxy's idle deadline is later still.
    let started = tokio::time::Instant::now();
    round_trip(&mut client, b"ping").await;
    let mut buffer = [0u8; 8];
    let read = within("the idle close", client.read(&mut buffer))
        .await
        .unwrap();

    assert_eq!(read, 0, "expected EOF from the idle timeout");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed before the idle timeout"
    );
    assert_eq!(
        wait_for_metric(names::IDLE_TIMEOUTS_TOTAL, &[("listener", name)], 1.0).await,
        Some(1.0)
    );
    proxy.stop().await;
}

/// After shutdown starts, new clients are refused while an open connection keeps
/// working and finishes within the deadline.
async fn drain_lets_open_connection_finish(engine: EngineChoice, name: &str) {
    let upstream = spawn_echo().await;
    let proxy = Proxy::start(listener(name, upstream, engine)).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    round_trip(&mut client, b"before").await;

    proxy.begin_shutdown();
    within("the listener to close", async {
        while TcpStream::connect(proxy.addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let refused = TcpStream::connect(proxy.addr)
        .await
        .map(|_| ())
        .map_err(|error| error.kind());
    assert_eq!(refused, Err(io::ErrorKind::ConnectionRefused));

    round_trip(&mut client, b"during the drain").await;
    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    within("the upstream EOF", client.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(rest.is_empty());

    // The connection may finish before the drain counts what is open, so only the
    // absence of cut-offs is checked here (stop() asserts it).
    proxy.stop().await;
}

/// Checks that a connection still open at the drain deadline is reset and reported.
async fn drain_deadline_resets_connection(engine: EngineChoice, name: &str) {
    let upstream = spawn_echo().await;
    let mut config = listener(name, upstream, engine);
    config.listen = "127.0.0.1:0".parse().unwrap();
    let proxy = Proxy::start_config(styx_proxy::ProxyConfig {
        listeners: vec![config],
        metrics_listen: None,
        drain_timeout: Duration::from_millis(200),
    })
    .await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    round_trip(&mut client, b"open").await;

    let report = proxy.stop_report().await;
    assert_eq!(report.open_at_shutdown, 1);
    assert_eq!(report.cut_off, 1);
    let mut buffer = [0u8; 8];
    let outcome = within("the cut-off reset", client.read(&mut buffer)).await;
    assert_eq!(
        outcome.map_err(|error| error.kind()),
        Err(io::ErrorKind::ConnectionReset)
    );
}

/// Pooled connections that the upstream closed are discarded, and the client that
/// would have received them is served without noticing.
async fn pooled_closed_connection_discarded(engine: EngineChoice, name: &str) {
    let accepted = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let (counter, closed_counter) = (accepted.clone(), closed.clone());
    let upstream = spawn_upstream(move |stream| {
        let nth = counter.fetch_add(1, Ordering::SeqCst);
        let closed = closed_counter.clone();
        async move {
            // The first two connections are the ones the pool opens at start.
            if nth >= 2 {
                echo(stream).await;
            } else {
                drop(stream);
                closed.fetch_add(1, Ordering::SeqCst);
            }
        }
    })
    .await;
    let mut config = listener(name, upstream, engine);
    config.preconnect = 2;
    let proxy = Proxy::start(config).await;

    // On loopback the FIN reaches the pooled socket when the upstream closes it, so
    // from here on both pooled connections read as closed.
    within("the upstream to close both pooled connections", async {
        while closed.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    round_trip(&mut client, b"served anyway").await;
    drop(client);

    // The first pooled connection the client met was closed and discarded. The refill
    // that the take triggers runs on another thread. It may push a fresh connection
    // before the client reaches the second closed one. So the client ends with either a
    // miss (both discarded, a new connect) or a hit (the fresh one).
    let closed = [("listener", name), ("reason", "closed")];
    let listener_only = [("listener", name)];
    within("the closed connection to be discarded", async {
        while metric_now(names::POOL_DISCARDS_TOTAL, &closed).await < 1.0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let hits = metric_now(names::POOL_HITS_TOTAL, &listener_only).await;
    let misses = metric_now(names::POOL_MISSES_TOTAL, &listener_only).await;
    assert_eq!(hits + misses, 1.0, "one take, {hits} hits, {misses} misses");

    // Either way the proxy has made at least four connects once a fresh connection
    // waits in the pool again: the two closed ones, then the client's own and a refill,
    // or two refills. The histogram is recorded just after a connection enters the
    // pool. The next client is then served from the pool.
    within("the pool to refill", async {
        while upstream_connects(name).await < 4.0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    round_trip(&mut client, b"from the pool").await;
    drop(client);
    assert_eq!(
        metric_now(names::POOL_HITS_TOTAL, &listener_only).await,
        hits + 1.0
    );
    proxy.stop().await;
}

/// Starts an upstream that reads a header of `header_len` bytes, hands it to the
/// test, then echoes.
async fn spawn_header_upstream(
    header_len: usize,
) -> (std::net::SocketAddr, mpsc::UnboundedReceiver<Vec<u8>>) {
    let (header_tx, header_rx) = mpsc::unbounded_channel();
    let upstream = spawn_upstream(move |mut stream| {
        let header_tx = header_tx.clone();
        async move {
            let mut header = vec![0u8; header_len];
            if stream.read_exact(&mut header).await.is_err() {
                // A pooled connection closed at shutdown before any client used it.
                return;
            }
            header_tx.send(header).unwrap();
            echo(stream).await;
        }
    })
    .await;
    (upstream, header_rx)
}

/// Checks that the upstream receives a v1 line naming the client and the proxy address
/// before any client byte.
async fn proxy_protocol_v1_header(engine: EngineChoice, name: &str) {
    let client_socket = tokio::net::TcpSocket::new_v4().unwrap();
    client_socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let client_port = client_socket.local_addr().unwrap().port();

    // The line's length depends on the port numbers, so the upstream reads up to CRLF.
    let (line_tx, mut line_rx) = mpsc::unbounded_channel();
    let upstream = spawn_upstream(move |mut stream| {
        let line_tx = line_tx.clone();
        async move {
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while !line.ends_with(b"\r\n") {
                if stream.read_exact(&mut byte).await.is_err() {
                    return;
                }
                line.push(byte[0]);
            }
            line_tx.send(line).unwrap();
            echo(stream).await;
        }
    })
    .await;
    let mut config = listener(name, upstream, engine);
    config.proxy_protocol = Some(ProxyProtocol::V1);
    let proxy = Proxy::start(config).await;

    let mut client = client_socket.connect(proxy.addr).await.unwrap();
    round_trip(&mut client, b"after the header").await;

    drop(client);
    let line = within("the header", line_rx.recv()).await.unwrap();
    let expected = format!(
        "PROXY TCP4 127.0.0.1 127.0.0.1 {client_port} {}\r\n",
        proxy.addr.port()
    );
    assert_eq!(String::from_utf8(line).unwrap(), expected);
    proxy.stop().await;
}

/// Checks that a pooled upstream connection receives the v2 header of the client it
/// is handed to, byte for byte.
async fn proxy_protocol_v2_header_on_pooled(engine: EngineChoice, name: &str) {
    let (upstream, mut header_rx) = spawn_header_upstream(28).await;
    let mut config = listener(name, upstream, engine);
    config.proxy_protocol = Some(ProxyProtocol::V2);
    config.preconnect = 1;
    let proxy = Proxy::start(config).await;
    within("the pool to fill", async {
        while upstream_connects(name).await < 1.0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    let client_port = client.local_addr().unwrap().port();
    round_trip(&mut client, b"after the header").await;
    drop(client);

    let header = within("the header", header_rx.recv()).await.unwrap();
    let mut expected = vec![
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
    ];
    expected.extend_from_slice(&[0x21, 0x11, 0x00, 12]);
    expected.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 1]);
    expected.extend_from_slice(&client_port.to_be_bytes());
    expected.extend_from_slice(&proxy.addr.port().to_be_bytes());
    assert_eq!(header, expected);
    assert_eq!(
        wait_for_metric(names::POOL_HITS_TOTAL, &[("listener", name)], 1.0).await,
        Some(1.0)
    );
    proxy.stop().await;
}

/// Returns how many upstream connects listener `name` has completed, pool refills
/// included.
async fn upstream_connects(name: &str) -> f64 {
    let samples = parse_samples(&scrape().await);
    let count_name = format!("{}_count", names::UPSTREAM_CONNECT_DURATION_SECONDS);
    value(&samples, &count_name, &[("listener", name)]).unwrap_or(0.0)
}

/// Checks that the scraped page has the documented names and labels, with values that
/// match the traffic sent.
async fn metrics_match_traffic(engine: EngineChoice, name: &str) {
    let upstream = spawn_echo().await;
    let proxy = Proxy::start(listener(name, upstream, engine)).await;

    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    round_trip(&mut client, &pattern(5, 3000)).await;
    round_trip(&mut client, &pattern(6, 1000)).await;
    assert_eq!(
        wait_for_metric(names::CONNECTIONS_ACTIVE, &[("listener", name)], 1.0).await,
        Some(1.0)
    );
    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    within("the upstream EOF", client.read_to_end(&mut rest))
        .await
        .unwrap();
    drop(client);

    let completed = [("listener", name), ("result", "completed")];
    assert_eq!(
        wait_for_metric(names::CONNECTIONS_TOTAL, &completed, 1.0).await,
        Some(1.0)
    );
    let page = scrape().await;
    let samples = parse_samples(&page);
    let c2u = [("listener", name), ("direction", "client_to_upstream")];
    let u2c = [("listener", name), ("direction", "upstream_to_client")];
    assert_eq!(value(&samples, names::BYTES_TOTAL, &c2u), Some(4000.0));
    assert_eq!(value(&samples, names::BYTES_TOTAL, &u2c), Some(4000.0));
    assert_eq!(
        value(&samples, names::CONNECTIONS_ACTIVE, &[("listener", name)]),
        Some(0.0)
    );
    let histogram_count = format!("{}_count", names::UPSTREAM_CONNECT_DURATION_SECONDS);
    assert_eq!(
        value(&samples, &histogram_count, &[("listener", name)]),
        Some(1.0)
    );
    let bucket = format!("{}_bucket", names::UPSTREAM_CONNECT_DURATION_SECONDS);
    assert_eq!(
        value(&samples, &bucket, &[("listener", name), ("le", "+Inf")]),
        Some(1.0)
    );
    let histogram_type = format!(
        "# TYPE {} histogram",
        names::UPSTREAM_CONNECT_DURATION_SECONDS
    );
    assert!(
        page.contains(&histogram_type),
        "connect duration is not a histogram:\n{page}"
    );
    assert!(page.contains(&format!("# TYPE {} counter", names::CONNECTIONS_TOTAL)));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_fds_gauge_reported() {
    let _ = metrics_addr();
    let open = within("the fd gauge", async {
        loop {
            // The gauge exists before its first update, with value 0.
            let open = value(&parse_samples(&scrape().await), names::OPEN_FDS, &[]);
            if let Some(open) = open.filter(|open| *open > 0.0) {
                return open;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(open >= 3.0, "open fds gauge is {open}");
    let max = value(&parse_samples(&scrape().await), names::MAX_FDS, &[]).expect("max fds gauge");
    assert!(max >= open);
}

/// Checks that every error, reset, timeout and pool series of a listener exists at 0
/// before its first event, so `rate()` over it has data from the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_series_start_at_zero() {
    let name = "zero-series";
    let upstream = spawn_echo().await;
    let proxy = Proxy::start(listener(name, upstream, EngineChoice::Copy)).await;

    // The accept loop registers its series when its task starts.
    let fd_limit = [("listener", name), ("reason", "fd_limit")];
    assert_eq!(
        wait_for_metric(names::ACCEPT_ERRORS_TOTAL, &fd_limit, 0.0).await,
        Some(0.0)
    );
    let samples = parse_samples(&scrape().await);
    let mut expected = vec![
        (names::ACCEPT_ERRORS_TOTAL, vec![("reason", "other")]),
        (names::RESETS_TOTAL, vec![("side", "client")]),
        (names::RESETS_TOTAL, vec![("side", "upstream")]),
        (names::IDLE_TIMEOUTS_TOTAL, vec![]),
        (names::POOL_HITS_TOTAL, vec![]),
        (names::POOL_MISSES_TOTAL, vec![]),
    ];
    for reason in names::CONNECT_ERROR_REASONS {
        expected.push((
            names::UPSTREAM_CONNECT_ERRORS_TOTAL,
            vec![("reason", reason)],
        ));
    }
    for reason in names::POOL_DISCARD_REASONS {
        expected.push((names::POOL_DISCARDS_TOTAL, vec![("reason", reason)]));
    }
    for (metric, mut labels) in expected {
        labels.push(("listener", name));
        assert_eq!(
            value(&samples, metric, &labels),
            Some(0.0),
            "{metric} {labels:?}"
        );
    }
    proxy.stop().await;
}

//! The plugin's gRPC server on a unix socket, from bind to exit.
//!
//! Order matters to the host: the socket is bound and the server is accepting before
//! the handshake line goes to stdout, and nothing else is ever written to stdout.
//! The server runs until the host calls GRPCController.Shutdown or the process gets
//! SIGTERM. SIGINT is ignored, like Go plugins do, so that Ctrl-C on a Nomad agent
//! running in a terminal leaves the plugin to Nomad's own orderly shutdown.

use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::driver::Driver;
use crate::grpc::{
    BasePluginService, BrokerService, ControllerService, DriverService, StdioService,
};
use crate::handshake::handshake_line;
use crate::proto::base::base_plugin_server::BasePluginServer;
use crate::proto::drivers::driver_server::DriverServer;
use crate::proto::plugin::{
    grpc_broker_server::GrpcBrokerServer, grpc_controller_server::GrpcControllerServer,
    grpc_stdio_server::GrpcStdioServer,
};
use crate::socket::{self, SocketOptions};

/// Service name that go-plugin's health check requests.
pub const HEALTH_SERVICE_NAME: &str = "plugin";

/// Time that open calls get to finish after shutdown was requested. The host kills the
/// plugin 2 s after its Shutdown call, so this stays well below that.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("failed to create the plugin socket in {}: {source}", dir.display())]
    Bind {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("failed to write the handshake line to stdout: {0}")]
    Handshake(#[source] io::Error),

    #[error("failed to install the signal handlers: {0}")]
    Signals(#[source] io::Error),

    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves the plugin until shutdown. The handshake line goes to `handshake_out` once the
/// socket accepts connections. The socket file is removed on return.
pub async fn serve(
    driver: Driver,
    socket: &SocketOptions,
    mut handshake_out: impl Write,
) -> Result<(), ServeError> {
    watch_signals(&driver).map_err(ServeError::Signals)?;
    let (listener, socket_path) = socket::bind(socket).map_err(|source| ServeError::Bind {
        dir: socket.dir.clone(),
        source,
    })?;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status(HEALTH_SERVICE_NAME, ServingStatus::Serving)
        .await;

    let shutdown = driver.shutdown_token().clone();
    let server = Server::builder()
        .add_service(health_service)
        .add_service(GrpcControllerServer::new(ControllerService::new(
            driver.clone(),
        )))
        .add_service(GrpcStdioServer::new(StdioService::new(driver.clone())))
        .add_service(GrpcBrokerServer::new(BrokerService::new(driver.clone())))
        .add_service(BasePluginServer::new(BasePluginService::new(
            driver.clone(),
        )))
        .add_service(DriverServer::new(DriverService::new(driver.clone())))
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(listener),
            shutdown.clone().cancelled_owned(),
        );
    let mut server = tokio::spawn(server);

    let line = handshake_line(&socket_path);
    handshake_out
        .write_all(line.as_bytes())
        .and_then(|()| handshake_out.flush())
        .map_err(ServeError::Handshake)?;
    tracing::info!(socket = %socket_path.display(), "plugin listening");

    // The server also stops once shutdown fires, so check shutdown first: only a server
    // that stopped without it failed.
    tokio::select! {
        biased;
        () = shutdown.cancelled() => {}
        result = &mut server => return flatten(result),
    }

    // Streams end when the shutdown token fires, so open calls finish quickly. A call
    // that does not is cut off when the process exits.
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(result) => flatten(result)?,
        Err(_) => tracing::debug!("open calls cut off at exit"),
    }
    tracing::info!("plugin stopped");
    drop(socket_path);
    Ok(())
}

fn flatten(
    result: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> Result<(), ServeError> {
    match result {
        Ok(served) => served.map_err(ServeError::from),
        Err(join_error) => std::panic::resume_unwind(join_error.into_panic()),
    }
}

/// Ignores SIGINT and turns SIGTERM into an orderly shutdown.
fn watch_signals(driver: &Driver) -> io::Result<()> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let driver = driver.clone();

    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = interrupt.recv() => tracing::debug!("ignored SIGINT; Nomad stops the plugin itself"),
                _ = terminate.recv() => {
                    tracing::info!("received SIGTERM, shutting down");
                    driver.request_exit();
                    return;
                }
            }
        }
    });
    Ok(())
}

//! go-plugin's auxiliary services in proto package `plugin`.
//!
//! - GRPCController: the host's Shutdown makes the process exit. The host waits 2 s
//!   after the call and then sends SIGKILL.
//! - GRPCStdio: the host opens one stream per connection to receive the plugin's
//!   stdout and stderr. This plugin writes nothing there (logs go to stderr directly),
//!   so the stream stays open and empty.
//! - GRPCBroker: the host opens one stream per connection to negotiate extra
//!   connections. Nomad's driver protocol never requests one, so incoming messages
//!   are read and dropped.

use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{ResponseStream, idle_stream};
use crate::driver::Driver;
use crate::proto::plugin::{
    ConnInfo, Empty, StdioData, grpc_broker_server::GrpcBroker,
    grpc_controller_server::GrpcController, grpc_stdio_server::GrpcStdio,
};

pub struct ControllerService {
    driver: Driver,
}

impl ControllerService {
    pub fn new(driver: Driver) -> Self {
        Self { driver }
    }
}

#[tonic::async_trait]
impl GrpcController for ControllerService {
    async fn shutdown(&self, _request: Request<Empty>) -> Result<Response<Empty>, Status> {
        tracing::info!("plugin host requested shutdown");
        self.driver.request_exit();
        Ok(Response::new(Empty {}))
    }
}

pub struct StdioService {
    driver: Driver,
}

impl StdioService {
    pub fn new(driver: Driver) -> Self {
        Self { driver }
    }
}

#[tonic::async_trait]
impl GrpcStdio for StdioService {
    type StreamStdioStream = ResponseStream<StdioData>;

    async fn stream_stdio(
        &self,
        _request: Request<()>,
    ) -> Result<Response<Self::StreamStdioStream>, Status> {
        Ok(Response::new(idle_stream(
            self.driver.shutdown_token().clone(),
        )))
    }
}

pub struct BrokerService {
    driver: Driver,
}

impl BrokerService {
    pub fn new(driver: Driver) -> Self {
        Self { driver }
    }
}

#[tonic::async_trait]
impl GrpcBroker for BrokerService {
    type StartStreamStream = ResponseStream<ConnInfo>;

    async fn start_stream(
        &self,
        request: Request<Streaming<ConnInfo>>,
    ) -> Result<Response<Self::StartStreamStream>, Status> {
        let mut incoming = request.into_inner();
        let (sender, receiver) = mpsc::channel(1);
        let shutdown = self.driver.shutdown_token().clone();

        tokio::spawn(async move {
            // The sender lives as long as this task, which keeps the response open.
            let _sender = sender;
            loop {
                tokio::select! {
                    message = incoming.next() => match message {
                        Some(Ok(info)) => tracing::debug!(service_id = info.service_id, "ignored broker request"),
                        Some(Err(_)) | None => return,
                    },
                    () = shutdown.cancelled() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

//! Nomad's Driver service.
//!
//! NOTE: the task lifecycle is not implemented yet. StartTask decodes and validates the
//! task config, then returns UNIMPLEMENTED like the other task RPCs. The streams Nomad
//! keeps open for the whole plugin lifetime (Fingerprint and TaskEvents) are served for
//! real, because an ended or failed stream makes Nomad call again at once.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{ResponseStream, idle_stream};
use crate::config::TaskConfig;
use crate::driver::Driver;
use crate::fingerprint;
use crate::proto::drivers::{
    CapabilitiesRequest, CapabilitiesResponse, CreateNetworkRequest, CreateNetworkResponse,
    DestroyNetworkRequest, DestroyNetworkResponse, DestroyTaskRequest, DestroyTaskResponse,
    DriverTaskEvent, ExecTaskRequest, ExecTaskResponse, ExecTaskStreamingRequest,
    ExecTaskStreamingResponse, FingerprintRequest, FingerprintResponse, InitRequest, InitResponse,
    InspectTaskRequest, InspectTaskResponse, RecoverTaskRequest, RecoverTaskResponse,
    ShutdownRequest, ShutdownResponse, SignalTaskRequest, SignalTaskResponse, StartTaskRequest,
    StartTaskResponse, StopTaskRequest, StopTaskResponse, TaskConfigSchemaRequest,
    TaskConfigSchemaResponse, TaskEventsRequest, TaskStatsRequest, TaskStatsResponse,
    WaitTaskRequest, WaitTaskResponse, driver_server,
};

/// Capacity of each server stream's queue. Fingerprints and events are rare, so a small
/// queue is enough and bounds memory when a client stops reading.
const STREAM_CAPACITY: usize = 4;

pub struct DriverService {
    driver: Driver,
}

impl DriverService {
    pub fn new(driver: Driver) -> Self {
        Self { driver }
    }
}

/// Returns the status for a task RPC that this build cannot serve yet.
fn lifecycle_unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "{rpc} is not implemented yet: this styx-driver build serves plugin config and \
         fingerprinting, but cannot run tasks"
    ))
}

#[tonic::async_trait]
impl driver_server::Driver for DriverService {
    async fn init(&self, _request: Request<InitRequest>) -> Result<Response<InitResponse>, Status> {
        Ok(Response::new(InitResponse {}))
    }

    async fn task_config_schema(
        &self,
        _request: Request<TaskConfigSchemaRequest>,
    ) -> Result<Response<TaskConfigSchemaResponse>, Status> {
        Ok(Response::new(TaskConfigSchemaResponse {
            spec: Some(TaskConfig::schema()),
        }))
    }

    async fn capabilities(
        &self,
        _request: Request<CapabilitiesRequest>,
    ) -> Result<Response<CapabilitiesResponse>, Status> {
        Ok(Response::new(CapabilitiesResponse {
            capabilities: Some(self.driver.capabilities()),
        }))
    }

    type FingerprintStream = ResponseStream<FingerprintResponse>;

    async fn fingerprint(
        &self,
        _request: Request<FingerprintRequest>,
    ) -> Result<Response<Self::FingerprintStream>, Status> {
        let (sender, receiver) = mpsc::channel(STREAM_CAPACITY);
        tokio::spawn(fingerprint::stream(
            self.driver.watch_config(),
            self.driver.shutdown_token().clone(),
            sender,
        ));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn recover_task(
        &self,
        _request: Request<RecoverTaskRequest>,
    ) -> Result<Response<RecoverTaskResponse>, Status> {
        Err(lifecycle_unimplemented("RecoverTask"))
    }

    async fn start_task(
        &self,
        request: Request<StartTaskRequest>,
    ) -> Result<Response<StartTaskResponse>, Status> {
        let task = request
            .into_inner()
            .task
            .ok_or_else(|| Status::invalid_argument("StartTask request has no task"))?;

        self.driver
            .decode_task_config(&task.msgpack_driver_config)
            .map_err(|error| {
                Status::invalid_argument(format!(
                    "invalid task config for task {:?}: {error}",
                    task.name
                ))
            })?;
        Err(lifecycle_unimplemented("StartTask"))
    }

    async fn wait_task(
        &self,
        _request: Request<WaitTaskRequest>,
    ) -> Result<Response<WaitTaskResponse>, Status> {
        Err(lifecycle_unimplemented("WaitTask"))
    }

    async fn stop_task(
        &self,
        _request: Request<StopTaskRequest>,
    ) -> Result<Response<StopTaskResponse>, Status> {
        Err(lifecycle_unimplemented("StopTask"))
    }

    async fn destroy_task(
        &self,
        _request: Request<DestroyTaskRequest>,
    ) -> Result<Response<DestroyTaskResponse>, Status> {
        Err(lifecycle_unimplemented("DestroyTask"))
    }

    async fn inspect_task(
        &self,
        _request: Request<InspectTaskRequest>,
    ) -> Result<Response<InspectTaskResponse>, Status> {
        Err(lifecycle_unimplemented("InspectTask"))
    }

    type TaskStatsStream = ResponseStream<TaskStatsResponse>;

    async fn task_stats(
        &self,
        _request: Request<TaskStatsRequest>,
    ) -> Result<Response<Self::TaskStatsStream>, Status> {
        Err(lifecycle_unimplemented("TaskStats"))
    }

    type TaskEventsStream = ResponseStream<DriverTaskEvent>;

    /// Keeps the stream open without events until the client leaves or the plugin
    /// exits: no task runs, so there is nothing to report.
    async fn task_events(
        &self,
        _request: Request<TaskEventsRequest>,
    ) -> Result<Response<Self::TaskEventsStream>, Status> {
        Ok(Response::new(idle_stream(
            self.driver.shutdown_token().clone(),
        )))
    }

    async fn signal_task(
        &self,
        _request: Request<SignalTaskRequest>,
    ) -> Result<Response<SignalTaskResponse>, Status> {
        Err(lifecycle_unimplemented("SignalTask"))
    }

    async fn exec_task(
        &self,
        _request: Request<ExecTaskRequest>,
    ) -> Result<Response<ExecTaskResponse>, Status> {
        Err(lifecycle_unimplemented("ExecTask"))
    }

    type ExecTaskStreamingStream = ResponseStream<ExecTaskStreamingResponse>;

    async fn exec_task_streaming(
        &self,
        _request: Request<Streaming<ExecTaskStreamingRequest>>,
    ) -> Result<Response<Self::ExecTaskStreamingStream>, Status> {
        Err(lifecycle_unimplemented("ExecTaskStreaming"))
    }

    async fn create_network(
        &self,
        _request: Request<CreateNetworkRequest>,
    ) -> Result<Response<CreateNetworkResponse>, Status> {
        Err(Status::unimplemented(
            "apple-container does not create network namespaces (must_create_network is false)",
        ))
    }

    async fn destroy_network(
        &self,
        _request: Request<DestroyNetworkRequest>,
    ) -> Result<Response<DestroyNetworkResponse>, Status> {
        Err(Status::unimplemented(
            "apple-container does not create network namespaces (must_create_network is false)",
        ))
    }

    /// Nomad calls this before unloading the plugin. Tasks keep running, and the
    /// process exits on the controller's Shutdown that follows.
    async fn shutdown(
        &self,
        _request: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownResponse>, Status> {
        tracing::info!("Nomad is unloading the driver");
        Ok(Response::new(ShutdownResponse {}))
    }
}

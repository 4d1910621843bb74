//! Nomad's Driver service: converts messages and maps [`TaskError`]s to statuses.
//!
//! The streams Nomad keeps open for the whole plugin lifetime (Fingerprint and
//! TaskEvents) never end on their own, because an ended or failed stream makes Nomad
//! call again at once.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;

use super::ResponseStream;
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
use crate::task::TaskError;

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

/// Stats interval used when Nomad sends none; Nomad's own default is 1 s.
const DEFAULT_STATS_INTERVAL: Duration = Duration::from_secs(1);

fn to_duration(duration: Option<prost_types::Duration>) -> Option<Duration> {
    let duration = duration?;
    let seconds = u64::try_from(duration.seconds).ok()?;
    let nanos = u32::try_from(duration.nanos).ok()?;
    Some(Duration::new(seconds, nanos)).filter(|duration| !duration.is_zero())
}

fn status(error: TaskError) -> Status {
    tracing::debug!(error = %error, "task operation failed");
    error.into_status()
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

    /// Nomad leaves `task_id` empty; the handle's config carries the ID.
    async fn recover_task(
        &self,
        request: Request<RecoverTaskRequest>,
    ) -> Result<Response<RecoverTaskResponse>, Status> {
        let handle = request
            .into_inner()
            .handle
            .ok_or_else(|| Status::invalid_argument("RecoverTask request has no handle"))?;
        let context = self.driver.task_context();
        self.driver
            .lifecycle()
            .recover(&context, handle)
            .await
            .map_err(status)?;
        Ok(Response::new(RecoverTaskResponse {}))
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

        let context = self.driver.task_context();
        let task_id = task.id.clone();
        let started = self
            .driver
            .lifecycle()
            .start(&context, task)
            .await
            .map_err(|error| {
                tracing::info!(task_id = %task_id, error = %error, "task failed to start");
                error.into_status()
            })?;
        Ok(Response::new(StartTaskResponse {
            handle: Some(started.handle),
            network_override: Some(started.network),
            ..StartTaskResponse::default()
        }))
    }

    /// Blocks until the task exits. An exit code the driver could not learn is
    /// reported as 0 with the reason in `err`.
    async fn wait_task(
        &self,
        request: Request<WaitTaskRequest>,
    ) -> Result<Response<WaitTaskResponse>, Status> {
        let task_id = request.into_inner().task_id;
        let exit = self
            .driver
            .lifecycle()
            .wait(&task_id)
            .await
            .map_err(status)?;
        Ok(Response::new(WaitTaskResponse {
            result: Some(exit.result),
            err: exit.unknown_reason.unwrap_or_default(),
        }))
    }

    async fn stop_task(
        &self,
        request: Request<StopTaskRequest>,
    ) -> Result<Response<StopTaskResponse>, Status> {
        let request = request.into_inner();
        let timeout = to_duration(request.timeout).unwrap_or_default();
        let context = self.driver.task_context();
        self.driver
            .lifecycle()
            .stop(&context, &request.task_id, timeout, &request.signal)
            .await
            .map_err(status)?;
        Ok(Response::new(StopTaskResponse {}))
    }

    async fn destroy_task(
        &self,
        request: Request<DestroyTaskRequest>,
    ) -> Result<Response<DestroyTaskResponse>, Status> {
        let request = request.into_inner();
        let context = self.driver.task_context();
        self.driver
            .lifecycle()
            .destroy(&context, &request.task_id, request.force)
            .await
            .map_err(status)?;
        Ok(Response::new(DestroyTaskResponse {}))
    }

    async fn inspect_task(
        &self,
        request: Request<InspectTaskRequest>,
    ) -> Result<Response<InspectTaskResponse>, Status> {
        let task_id = request.into_inner().task_id;
        let response = self.driver.lifecycle().inspect(&task_id).map_err(status)?;
        Ok(Response::new(response))
    }

    type TaskStatsStream = ResponseStream<TaskStatsResponse>;

    async fn task_stats(
        &self,
        request: Request<TaskStatsRequest>,
    ) -> Result<Response<Self::TaskStatsStream>, Status> {
        let request = request.into_inner();
        let interval = to_duration(request.collection_interval).unwrap_or(DEFAULT_STATS_INTERVAL);
        let (sender, receiver) = mpsc::channel(STREAM_CAPACITY);
        self.driver
            .lifecycle()
            .stream_stats(
                self.driver.task_context(),
                &request.task_id,
                interval,
                sender,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    type TaskEventsStream = ResponseStream<DriverTaskEvent>;

    /// Forwards every task event until the client leaves or the plugin exits.
    async fn task_events(
        &self,
        _request: Request<TaskEventsRequest>,
    ) -> Result<Response<Self::TaskEventsStream>, Status> {
        let mut events = self.driver.lifecycle().subscribe_events();
        let shutdown = self.driver.shutdown_token().clone();
        let (sender, receiver) = mpsc::channel(STREAM_CAPACITY);
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    event = events.recv() => event,
                    () = sender.closed() => return,
                    () = shutdown.cancelled() => return,
                };
                match event {
                    Ok(event) => {
                        if sender.send(Ok(event)).await.is_err() {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "task events dropped for a slow TaskEvents reader");
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn signal_task(
        &self,
        request: Request<SignalTaskRequest>,
    ) -> Result<Response<SignalTaskResponse>, Status> {
        let request = request.into_inner();
        let context = self.driver.task_context();
        self.driver
            .lifecycle()
            .signal(&context, &request.task_id, &request.signal)
            .await
            .map_err(status)?;
        Ok(Response::new(SignalTaskResponse {}))
    }

    async fn exec_task(
        &self,
        request: Request<ExecTaskRequest>,
    ) -> Result<Response<ExecTaskResponse>, Status> {
        let request = request.into_inner();
        let context = self.driver.task_context();
        let response = self
            .driver
            .lifecycle()
            .exec(
                &context,
                &request.task_id,
                &request.command,
                to_duration(request.timeout),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(response))
    }

    type ExecTaskStreamingStream = ResponseStream<ExecTaskStreamingResponse>;

    /// The first message must carry the setup; later ones carry stdin and terminal
    /// sizes.
    async fn exec_task_streaming(
        &self,
        request: Request<Streaming<ExecTaskStreamingRequest>>,
    ) -> Result<Response<Self::ExecTaskStreamingStream>, Status> {
        let mut requests = request.into_inner();
        let setup = requests
            .message()
            .await?
            .and_then(|first| first.setup)
            .ok_or_else(|| {
                Status::invalid_argument("the first ExecTaskStreaming message has no setup")
            })?;

        let (stdin_sender, stdin_receiver) = mpsc::channel(STREAM_CAPACITY);
        let (sender, receiver) = mpsc::channel(STREAM_CAPACITY);
        self.driver
            .lifecycle()
            .exec_streaming(
                &self.driver.task_context(),
                &setup.task_id,
                &setup.command,
                setup.tty,
                stdin_receiver,
                sender,
            )
            .map_err(status)?;

        tokio::spawn(async move {
            while let Ok(Some(message)) = requests.message().await {
                if let Some(stdin) = message.stdin
                    && stdin_sender.send(stdin).await.is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
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

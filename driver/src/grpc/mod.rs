//! gRPC services of the plugin. Each impl converts between wire messages and the
//! [`Driver`](crate::driver::Driver) core and maps errors to gRPC statuses; none of
//! them keeps state of its own.
//!
//! - `base`: Nomad's BasePlugin (identity, config schema, config).
//! - `driver`: Nomad's Driver service.
//! - `go_plugin`: go-plugin's controller, stdio and broker services.

mod base;
mod driver;
mod go_plugin;

pub use base::BasePluginService;
pub use driver::DriverService;
pub use go_plugin::{BrokerService, ControllerService, StdioService};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// Server stream type of every streaming RPC here.
type ResponseStream<T> = ReceiverStream<Result<T, Status>>;

/// Returns a stream that sends nothing and stays open until the client goes away or
/// `shutdown` fires, for streams the host expects to stay open.
fn idle_stream<T: Send + 'static>(shutdown: CancellationToken) -> ResponseStream<T> {
    let (sender, receiver) = mpsc::channel(1);
    tokio::spawn(async move {
        tokio::select! {
            () = sender.closed() => {}
            () = shutdown.cancelled() => {}
        }
    });
    ReceiverStream::new(receiver)
}

//! Load generators for the Styx data plane benchmarks, behind `styx-proxy bench`.
//!
//! One run measures the direct path (client to backend), each styx-proxy engine as its own
//! child process, and any peer proxy already running, side by side on the same backend.
//!
//! Layout:
//! - [`cli`]: the subcommand's options, validation and the run that prints the report.
//! - [`runner`]: the plan, the order paths run in, and medians over rounds.
//! - [`backend`]: the one TCP backend that serves every scenario, chosen by a header byte.
//! - [`bulk`], [`connect_rate`], [`request_response`], [`idle`]: one generator each.
//! - [`proxy_child`]: starting and stopping `styx-proxy run` children.
//! - [`process`]: CPU time and RSS of another process.
//! - [`report`]: the results as a table and as JSON.
#![forbid(unsafe_code)]

pub mod backend;
pub mod bulk;
pub mod cli;
pub mod connect_rate;
mod error;
pub mod idle;
mod net;
pub mod process;
pub mod proxy_child;
pub mod report;
pub mod request_response;
pub mod runner;

pub use error::BenchError;

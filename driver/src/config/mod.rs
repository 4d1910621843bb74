//! The driver's two configs: the agent's `plugin "apple-container" { config {} }` block
//! ([`PluginConfig`]) and each task's `config {}` block ([`TaskConfig`]).
//!
//! Each config has an hclspec schema that Nomad uses to check and encode the block, and a
//! decoder that turns the cty-msgpack bytes Nomad sends into a validated Rust value.
//! Defaults live once, as constants, and feed both the schema and the decoder.
//!
//! Layout:
//! - `schema`: builders for hclspec trees.
//! - `decode`: typed reading of cty-msgpack objects.
//! - `duration`: Go duration strings.
//! - `plugin`, `task`: the two configs.

mod decode;
mod duration;
mod plugin;
mod schema;
mod task;

pub use decode::DecodeError;
pub use duration::parse_duration;
pub use plugin::{BindAddress, PluginConfig};
pub use task::{MountKind, MountSpec, Platform, TaskConfig, VolumeBind};

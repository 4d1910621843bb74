//! Cross-crate tests: the Nomad client harness and the container simulator.
//!
//! Layout:
//! - [`nomad`]: starts `styx-driver` the way a Nomad client does, checks the handshake
//!   line, connects over the unix socket and returns gRPC clients built from the
//!   driver's own protos.
//! - [`prometheus`]: scrapes a metrics endpoint and parses the Prometheus text format.
//! - [`cty`]: encodes HCL-like config values into the cty-msgpack bytes Nomad sends in
//!   `SetConfig` and `StartTask`, following hcldec's rules for a given hclspec.
//! - [`task`]: what a Nomad client prepares for a task: alloc dirs, log FIFOs with
//!   readers, and the TaskConfig message.
//! - [`sim`]: a handle on the `container-sim` simulator's state directory.
//! - [`published`]: starting the simulator's echo task and reaching it through its
//!   published port.
//! - [`rpc`]: the task RPCs with the waits and checks every lifecycle test needs.
//! - [`fake_container`]: a minimal stand-in for Apple's `container` CLI that handles
//!   only the fingerprint probes.
//!
//! Binaries:
//! - `container-sim`: the simulator of Apple's `container` CLI (see its module docs).
//! - `styx-driver-under-test`: the `styx-driver` program under a second name. Its
//!   `main` calls `styx_driver::entry::main`, as `driver/src/main.rs` does, so it runs
//!   the product's code.
//!
//! Why two places for harness tests: Cargo sets `CARGO_BIN_EXE_<name>` only for a
//! package's own binaries. The plugin-only tests in `driver/tests/` use the real
//! `styx-driver` binary. The lifecycle tests in `tests/tests/` need the simulator too,
//! so they use `styx-driver-under-test`, which Cargo rebuilds with the driver library
//! before every `cargo test`, including `cargo test --workspace` on a clean checkout.
#![forbid(unsafe_code)]

pub mod cty;
pub mod fake_container;
pub mod nomad;
pub mod prometheus;
pub mod published;
pub mod rpc;
pub mod sim;
pub mod task;

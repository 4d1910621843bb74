//! Cross-crate tests: the Nomad client harness and the container simulator.
//!
//! Layout:
//! - [`nomad`]: starts `styx-driver` the way a Nomad client does, checks the handshake
//!   line, connects over the unix socket and returns gRPC clients built from the
//!   driver's own protos.
//! - [`cty`]: encodes HCL-like config values into the cty-msgpack bytes Nomad sends in
//!   `SetConfig` and `StartTask`, following hcldec's rules for a given hclspec.
//! - [`fake_container`]: a minimal stand-in for Apple's `container` CLI that handles
//!   only the fingerprint probes. The full simulator is a separate piece of work.
//!
//! The harness is a library, and the tests that drive the real binary live in
//! `driver/tests/`, because Cargo sets the path of a package's binaries
//! (`CARGO_BIN_EXE_<name>`) only for that package's own tests. They pass that path to [`nomad::Plugin::start`].
#![forbid(unsafe_code)]

pub mod cty;
pub mod fake_container;
pub mod nomad;

//! Cross-crate tests: the Nomad client harness and the container simulator
#![forbid(unsafe_code)]

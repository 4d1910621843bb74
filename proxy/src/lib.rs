//! Styx data plane.
#![forbid(unsafe_code)]

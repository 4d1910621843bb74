//! Load generators for the Styx data plane benchmarks.
#![forbid(unsafe_code)]

pub mod cli;

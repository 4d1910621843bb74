//! The styx command: sets up and inspects a node
#![forbid(unsafe_code)]

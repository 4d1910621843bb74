//! Nomad task driver plugin for Apple containers
#![forbid(unsafe_code)]

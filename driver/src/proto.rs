//! Rust types and gRPC stubs generated from the `.proto` files under `driver/proto/`.
//!
//! The module tree mirrors the protobuf packages because the generated code refers to
//! other packages through `super::` paths. Both server and client stubs are generated:
//! the plugin serves them, and the test harness in `tests/` plays the Nomad client with
//! them.

#![allow(clippy::all, missing_docs)]

pub mod hashicorp {
    pub mod nomad {
        pub mod plugins {
            pub mod base {
                pub mod proto {
                    tonic::include_proto!("hashicorp.nomad.plugins.base.proto");
                }
            }

            pub mod drivers {
                pub mod proto {
                    tonic::include_proto!("hashicorp.nomad.plugins.drivers.proto");
                }
            }

            pub mod shared {
                pub mod hclspec {
                    tonic::include_proto!("hashicorp.nomad.plugins.shared.hclspec");
                }

                pub mod structs {
                    tonic::include_proto!("hashicorp.nomad.plugins.shared.structs");
                }
            }
        }
    }
}

/// go-plugin's auxiliary services: controller, stdio and broker.
pub mod plugin {
    tonic::include_proto!("plugin");
}

pub use hashicorp::nomad::plugins::base::proto as base;
pub use hashicorp::nomad::plugins::drivers::proto as drivers;
pub use hashicorp::nomad::plugins::shared::hclspec;
pub use hashicorp::nomad::plugins::shared::structs;

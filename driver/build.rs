//! Compiles the project's `.proto` files into Rust with protox, a pure-Rust protobuf
//! compiler, so that building needs no system `protoc`.

use std::path::Path;

/// Proto files relative to `proto/`, which is also the include root. Nomad's protos
/// import each other as `plugins/...`, so the root must be the directory above `plugins`.
const PROTOS: &[&str] = &[
    "plugins/base/proto/base.proto",
    "plugins/drivers/proto/driver.proto",
    "plugins/shared/hclspec/hcl_spec.proto",
    "plugins/shared/structs/proto/attribute.proto",
    "plugins/shared/structs/proto/recoverable_error.proto",
    "plugins/shared/structs/proto/stats.proto",
    "plugin/grpc_broker.proto",
    "plugin/grpc_controller.proto",
    "plugin/grpc_stdio.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new("proto");
    println!("cargo:rerun-if-changed=proto");

    let files: Vec<_> = PROTOS.iter().map(|file| root.join(file)).collect();
    let descriptors = protox::compile(&files, [root])?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}

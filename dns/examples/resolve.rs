//! Runs the `resolve` subcommand on its own, as `styx-proxy resolve` will:
//! `cargo run -p styx-dns --example resolve -- web.service.consul --type srv --dns consul=127.0.0.1:8600`.

use std::process::ExitCode;

use clap::Parser;
use styx_dns::cli::{ResolveArgs, run};

#[derive(Parser)]
struct Command {
    #[command(flatten)]
    args: ResolveArgs,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let command = Command::parse();
    match run(&command.args).await {
        Ok(output) => {
            print!("{output}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

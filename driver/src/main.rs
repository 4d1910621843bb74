//! `styx-driver`: the Nomad task driver plugin binary. Nomad starts it; run by hand it
//! explains that and exits with status 1, except with `--version` or `--help`. It also runs as a task's supervisor, which
//! the plugin starts with the `supervise` subcommand.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    styx_driver::entry::main()
}

//! The `styx-driver` program built inside this crate, so that tests here can start it
//! through `CARGO_BIN_EXE_styx-driver-under-test`. Its `main` is the library's entry
//! point, the same one `driver/src/main.rs` calls, so it runs the product's code.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    styx_driver::entry::main()
}

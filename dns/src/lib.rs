//! Split DNS resolver for *.ts.net and *.consul names
#![forbid(unsafe_code)]

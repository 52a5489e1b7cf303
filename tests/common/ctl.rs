//! The `concentrator` command line against a running server's control socket (`--socket`), as
//! an operator runs it.

use std::path::Path;
use std::time::Duration;

use super::{cmd, Lab, Output, BIN};

/// How long one command may take (`show` of many peers and `reload` are the slowest).
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `concentrator <args> --socket <socket>`; returns the output.
pub fn cli_at(socket: &Path, args: &[&str]) -> Output {
    let mut argv = vec![BIN];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["--socket", socket.to_str().unwrap()]);
    cmd::run(&argv, None, CLI_TIMEOUT)
}

/// [`cli_at`], which must succeed; returns stdout.
pub fn cli_at_ok(socket: &Path, args: &[&str]) -> String {
    succeeded(cli_at(socket, args), args, String::new).stdout
}

/// Runs `concentrator <args> --socket <lab socket>`; returns the output.
pub fn cli(lab: &Lab, args: &[&str]) -> Output {
    cli_at(&lab.control_socket(), args)
}

/// [`cli`], which must succeed; a failure shows the lab's logs too. Returns the whole output
/// (stderr carries notes and warnings).
pub fn cli_ok_output(lab: &Lab, args: &[&str]) -> Output {
    succeeded(cli(lab, args), args, || lab.logs())
}

/// [`cli_ok_output`]'s stdout.
pub fn cli_ok(lab: &Lab, args: &[&str]) -> String {
    cli_ok_output(lab, args).stdout
}

/// `out`, the output of `concentrator <args>`, which must have succeeded; a failure message
/// ends with what `context` says.
fn succeeded(out: Output, args: &[&str], context: impl FnOnce() -> String) -> Output {
    if !out.ok() {
        panic!(
            "concentrator {args:?} failed ({:?}): {}\n{}\n{}",
            out.status,
            out.stdout,
            out.stderr,
            context()
        );
    }
    out
}

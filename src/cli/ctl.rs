//! The operator's commands (`show`, `peer`, `reload`): find the control socket, send one request.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Result};

use concentrator::ops::protocol::Request;
use concentrator::ops::socket;

/// How long a command waits for the server (a reload reads the config and key files).
const TIMEOUT: Duration = Duration::from_secs(30);
/// Where the default sockets live.
const RUN_DIR: &str = "/run/concentrator";

/// The socket to talk to: `--socket`, else the only one in /run/concentrator.
pub fn socket_path(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let found: Vec<PathBuf> = std::fs::read_dir(RUN_DIR)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                .collect()
        })
        .unwrap_or_default();
    match found.len() {
        1 => Ok(found.into_iter().next().unwrap_or_default()),
        0 => bail!(
            "no control socket in {RUN_DIR}: is the server running (and are you root)? \
             Give --socket PATH if its config sets control_socket"
        ),
        _ => bail!(
            "several servers run here; pick one with --socket: {}",
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Sends `req` and returns the typed answer (an error when the server says no).
pub fn request<T: serde::de::DeserializeOwned>(
    explicit: Option<&Path>,
    req: &Request,
) -> Result<T> {
    socket::request(&socket_path(explicit)?, req, TIMEOUT)
}

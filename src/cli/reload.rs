//! `concentrator reload`: the server re-reads its config and applies the peer differences (as on
//! SIGHUP), reporting what changed; a config with problems is refused with all of them.

use std::path::Path;

use anyhow::Result;

use concentrator::ops::protocol::{ReloadReply, Request};

/// The text form of a reload report.
pub fn render(r: &ReloadReply) -> String {
    let mut o = String::new();
    for k in &r.added {
        o += &format!("added: {k}\n");
    }
    for k in &r.removed {
        o += &format!("removed: {k}\n");
    }
    for c in &r.changed {
        o += &format!("changed: {} ({})\n", c.public_key, c.what.join(", "));
    }
    o += &format!("unchanged: {} peers\n", r.unchanged);
    if !r.restart_needed.is_empty() {
        o += &format!(
            "not applied until a restart: {}\n",
            r.restart_needed.join(", ")
        );
    }
    for w in &r.warnings {
        o += &format!("warning: {w}\n");
    }
    o
}

/// Asks the server to reload.
pub fn run(socket: Option<&Path>, json_out: bool) -> Result<()> {
    let report: ReloadReply = super::ctl::request(socket, &Request::Reload)?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

//! `concentrator reload`: the server re-reads its config and applies the peer differences (as on
//! SIGHUP), reporting what changed; a config with problems is refused with all of them.

use std::path::Path;

use anyhow::Result;
use serde_json::{json, Value};

/// The text form of a reload report.
pub fn render(v: &Value) -> String {
    let list = |k: &str| -> Vec<String> {
        v[k].as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect()
    };
    let mut o = String::new();
    for k in list("added") {
        o += &format!("added: {k}\n");
    }
    for k in list("removed") {
        o += &format!("removed: {k}\n");
    }
    for c in v["changed"].as_array().into_iter().flatten() {
        let what: Vec<&str> = c["what"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str())
            .collect();
        o += &format!(
            "changed: {} ({})\n",
            c["public_key"].as_str().unwrap_or(""),
            what.join(", ")
        );
    }
    o += &format!("unchanged: {} peers\n", v["unchanged"]);
    let restart = list("restart_needed");
    if !restart.is_empty() {
        o += &format!("not applied until a restart: {}\n", restart.join(", "));
    }
    o
}

/// Asks the server to reload.
pub fn run(socket: Option<&Path>, json_out: bool) -> Result<()> {
    let v = super::ctl::request(socket, &json!({"cmd": "reload"}))?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", render(&v));
    }
    Ok(())
}

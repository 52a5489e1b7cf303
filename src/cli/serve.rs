//! The server: `concentrator --config server.toml [--workers N]`. The engine is the library's
//! (`server::engine`); here are the options, the privilege drop, the operator's doors and the
//! signals.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use concentrator::config::ServerConfig;
use concentrator::ops::{frontdoor::FrontDoor, registry, Ops};
use concentrator::server::control::command::Addressing;
use concentrator::server::engine::{Engine, EngineOptions};
use concentrator::server::latency::{write_latency_dump, LATENCY_DUMP_ENV};
use concentrator::sys::{notify, privs, signals};

/// Options from the command line that override the file.
pub struct ServeOptions {
    /// `--workers`.
    pub workers: Option<usize>,
    /// `--no-offloads`: the kill switch for TUN and UDP offloads, whatever the file says.
    pub no_offloads: bool,
}

/// Runs the server until SIGINT or SIGTERM (or until one of its threads dies).
pub fn run(config_path: &Path, options: ServeOptions) -> Result<()> {
    let (config, warnings) = ServerConfig::load(config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let engine_options = EngineOptions {
        workers: options.workers.unwrap_or(config.workers),
        offloads: config.offloads && !options.no_offloads,
    };
    signals::block();
    let prepared = Engine::prepare(&config, engine_options)?;
    let doors = FrontDoor::bind(&config, prepared.interface())?;
    // Drop root before any thread exists: threads inherit the capabilities of this one.
    if let Some(user) = &config.user {
        drop_privileges(user, &doors)?;
    }
    let mut engine = prepared.start(&config)?;
    let (listen_port, peers) = (config.listen_port, config.peers.len());
    let registry = match &config.registry {
        Some(r) => Some(
            registry::spawn(registry::RegistryContext {
                config: r.clone(),
                addressing: Addressing::of(&config),
                commands: engine.commands(),
                handshakes: engine.handshake_stats(),
                stop: engine.stop_flag(),
                server_key: config.public_key,
            })
            .context("starting the registry thread")?,
        ),
        None => None,
    };
    let mut ops = Ops::for_engine(&engine, config_path.to_path_buf(), config);
    if let Some(r) = registry {
        ops = ops.with_registry(r);
    }
    let ops = Arc::new(ops);
    let socket_path = doors.control_socket_path().display().to_string();
    let uapi_path = doors
        .uapi_socket_path()
        .map_or_else(|| "off".to_string(), |p| p.display().to_string());
    let served = doors.serve(&engine, ops.clone())?;
    tracing::info!(
        interface = %engine.interface(),
        port = listen_port,
        workers = engine_options.workers,
        peers,
        offloads = %engine.offload_names(),
        wireguard_trains = concentrator::proto::keypair::wireguard_train_cipher(),
        control_socket = %socket_path,
        uapi = %uapi_path,
        "concentrator is up"
    );
    let _ = notify::notify("READY=1");
    wait_for_stop(&engine, &ops);
    let _ = notify::notify("STOPPING=1");
    if engine.thread_died() {
        tracing::error!("stopping because a thread died");
    } else {
        tracing::info!("stopping");
    }
    let stopped = engine.stop();
    if let Some(r) = &ops.registry {
        r.join();
    }
    served.close();
    if let Some(path) = std::env::var_os(LATENCY_DUMP_ENV) {
        let path = Path::new(&path);
        match write_latency_dump(path, engine.latencies()) {
            Ok(()) => tracing::info!(path = %path.display(), "wrote latency histograms"),
            Err(e) => tracing::warn!(error = %e, "could not write the latency histograms"),
        }
    }
    drop(engine);
    Ok(stopped?)
}

/// Signals until a stop: SIGINT/SIGTERM, or a dead thread (which sets the engine's stop flag).
/// SIGHUP reloads the configuration.
fn wait_for_stop(engine: &Engine, ops: &Ops) {
    while !engine.is_stopping() {
        match signals::wait(Duration::from_millis(200)) {
            Some(signals::Signal::Stop) => break,
            Some(signals::Signal::Reload) => {
                tracing::info!("SIGHUP: reloading the configuration");
                if let Err(e) = ops.reload() {
                    tracing::error!("reload refused, the running configuration stays:\n{e}");
                }
            }
            None => {}
        }
    }
}

/// Hands the doors to `user`, then becomes that user keeping only CAP_NET_ADMIN, unless the
/// server already runs as that user (as under the systemd unit, with CAP_NET_ADMIN ambient).
fn drop_privileges(user: &str, doors: &FrontDoor) -> Result<()> {
    let (uid, gid) = privs::lookup(user)?;
    if privs::effective_uid() == uid {
        tracing::info!(user = %user, uid, "already running as the configured user");
        return Ok(());
    }
    doors.chown(uid, gid)?;
    privs::drop_to(uid, gid).with_context(|| format!("dropping privileges to {user}"))?;
    tracing::info!(user = %user, uid, gid, "running as an unprivileged user with CAP_NET_ADMIN");
    Ok(())
}

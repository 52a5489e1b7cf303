//! The binary's edge: arguments, logging, exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

/// A userspace VPN headend: Noise IK handshakes, AES-256-GCM, multi-queue TUN, io_uring workers.
#[derive(Parser)]
#[command(name = "concentrator", version, args_conflicts_with_subcommands = true)]
struct Args {
    /// Server configuration file (runs the server).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Worker threads (default: the config's `workers`, else the number of cores).
    #[arg(long)]
    workers: Option<usize>,
    /// Turn TUN and UDP offloads off (overrides `offloads = true` in the file).
    #[arg(long)]
    no_offloads: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Connect to a server as a client.
    Connect {
        /// Client configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Turn TUN and UDP offloads off (overrides `offloads = true` in the file).
        #[arg(long)]
        no_offloads: bool,
    },
    /// Print a new private key.
    Genkey,
    /// Read a private key on stdin, print its public key.
    Pubkey,
    /// Show the running server: interface, workers, handshakes, latencies, peers (paged).
    Show {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// The control socket (default: the only one in /run/concentrator).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Peers to show (at most 10000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Peers to skip, in address order.
        #[arg(long, default_value_t = 0)]
        offset: usize,
    },
    /// Add or remove a peer on the running server, live.
    Peer {
        /// The control socket (default: the only one in /run/concentrator).
        #[arg(long, global = true)]
        socket: Option<PathBuf>,
        #[command(subcommand)]
        action: PeerAction,
    },
    /// Make the running server re-read its config and apply the peer changes (as SIGHUP).
    Reload {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// The control socket (default: the only one in /run/concentrator).
        #[arg(long)]
        socket: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PeerAction {
    /// Add a peer (not written to the config file).
    Add {
        /// Its base64 public key.
        #[arg(long)]
        public_key: String,
        /// A fixed virtual IPv4 address (default: from the pool, stable for the key).
        #[arg(long)]
        address: Option<std::net::Ipv4Addr>,
        /// A fixed virtual IPv6 address (default: from the pool, when the server has IPv6).
        #[arg(long)]
        address6: Option<std::net::Ipv6Addr>,
        /// A file holding the base64 pre-shared key.
        #[arg(long)]
        psk_file: Option<PathBuf>,
    },
    /// Remove a peer: its session ends, its address returns to the pool.
    Remove {
        /// Its base64 public key.
        public_key: String,
    },
}

fn main() -> ExitCode {
    concentrator::sys::mem::map_large_allocations_separately();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CONCENTRATOR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let result = match args.command {
        Some(Command::Connect {
            config,
            no_offloads,
        }) => cli::connect::run(&config, no_offloads),
        Some(Command::Genkey) => cli::keys::genkey(),
        Some(Command::Pubkey) => cli::keys::pubkey(),
        Some(Command::Show {
            json,
            socket,
            limit,
            offset,
        }) => cli::show::run(socket.as_deref(), json, offset, limit),
        Some(Command::Peer { socket, action }) => match action {
            PeerAction::Add {
                public_key,
                address,
                address6,
                psk_file,
            } => cli::peer::add(
                socket.as_deref(),
                &public_key,
                address,
                address6,
                psk_file.as_deref(),
            ),
            PeerAction::Remove { public_key } => cli::peer::remove(socket.as_deref(), &public_key),
        },
        Some(Command::Reload { json, socket }) => cli::reload::run(socket.as_deref(), json),
        None => match args.config {
            Some(config) => cli::serve::run(
                &config,
                cli::serve::ServeOptions {
                    workers: args.workers,
                    no_offloads: args.no_offloads,
                },
            ),
            None => Err(anyhow::anyhow!(
                "no --config given: run `concentrator --config server.toml`, or see --help"
            )),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

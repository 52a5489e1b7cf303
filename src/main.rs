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
}

fn main() -> ExitCode {
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

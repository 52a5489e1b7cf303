//! The command line, as clap definitions: parsed by `main`, and the source of the shell
//! completions and man pages (`concentrator completions`, `concentrator manpages`).

use std::path::PathBuf;

use clap::{ArgGroup, Parser, Subcommand, ValueEnum};

/// A userspace VPN headend: Noise IK handshakes, AES-256-GCM, multi-queue TUN, io_uring workers.
#[derive(Parser)]
#[command(
    name = "concentrator",
    version,
    args_conflicts_with_subcommands = true,
    after_help = "Logs go to stderr: CONCENTRATOR_LOG sets the level (e.g. debug, \
                  concentrator=trace), CONCENTRATOR_LOG_FORMAT=json writes JSON lines, NO_COLOR \
                  or a stderr that is not a terminal turns colour off."
)]
pub struct Args {
    /// Server configuration file (runs the server).
    #[arg(long, short, value_hint = clap::ValueHint::FilePath)]
    pub config: Option<PathBuf>,
    /// Worker threads (default: the config's `workers`, else the number of cores).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Turn TUN and UDP offloads off (overrides `offloads = true` in the file).
    #[arg(long)]
    pub no_offloads: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Connect to a server as a client.
    Connect {
        /// Client configuration file.
        #[arg(long, short, value_hint = clap::ValueHint::FilePath)]
        config: PathBuf,
        /// Turn TUN and UDP offloads off (overrides `offloads = true` in the file).
        #[arg(long)]
        no_offloads: bool,
    },
    /// Validate a server (--config) or client (--client) configuration without touching the
    /// system, and print its effective settings. Exit status 0 when valid, 1 otherwise.
    #[command(group(ArgGroup::new("file").required(true)))]
    Check {
        /// Server configuration file.
        #[arg(long, short, group = "file", value_hint = clap::ValueHint::FilePath)]
        config: Option<PathBuf>,
        /// Client configuration file.
        #[arg(long, group = "file", value_hint = clap::ValueHint::FilePath)]
        client: Option<PathBuf>,
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
        #[arg(long, value_hint = clap::ValueHint::FilePath)]
        socket: Option<PathBuf>,
        /// Peers to show (at most 10000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Peers to skip, in address order.
        #[arg(long, default_value_t = 0)]
        offset: usize,
        /// List the fleet's live headends (name, endpoint, clients, version) instead.
        #[arg(long)]
        fleet: bool,
    },
    /// Add or remove a peer on the running server, live.
    Peer {
        /// The control socket (default: the only one in /run/concentrator).
        #[arg(long, global = true, value_hint = clap::ValueHint::FilePath)]
        socket: Option<PathBuf>,
        #[command(subcommand)]
        action: PeerAction,
    },
    /// Write the running peers (added or removed live) back into the config file's [[peer]]
    /// list, keeping the rest of the file, so that a reload or restart keeps them (like
    /// `wg-quick save`).
    Save {
        /// The config file to rewrite (default: the one the server runs from).
        #[arg(long, short, value_hint = clap::ValueHint::FilePath)]
        config: Option<PathBuf>,
        /// The control socket (default: the only one in /run/concentrator).
        #[arg(long, value_hint = clap::ValueHint::FilePath)]
        socket: Option<PathBuf>,
    },
    /// Make the running server re-read its config and apply the peer changes (as SIGHUP).
    Reload {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// The control socket (default: the only one in /run/concentrator).
        #[arg(long, value_hint = clap::ValueHint::FilePath)]
        socket: Option<PathBuf>,
    },
    /// The fleet registry (etcd) of a server with a [registry] table.
    Registry {
        /// The control socket (default: the only one in /run/concentrator).
        #[arg(long, global = true, value_hint = clap::ValueHint::FilePath)]
        socket: Option<PathBuf>,
        #[command(subcommand)]
        action: RegistryAction,
    },
    /// Print the completion script for a shell (bash, zsh, fish).
    Completions {
        /// The shell.
        shell: CompletionShell,
    },
    /// Write the man pages (concentrator.1 and one per subcommand) into a directory.
    #[command(hide = true)]
    Manpages {
        /// The directory (created if missing).
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum PeerAction {
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
        /// Networks behind the peer, routed to it and accepted from it, comma-separated
        /// (e.g. 10.99.0.0/24,fd99::/48): its `allowed_ips`.
        #[arg(long, value_delimiter = ',')]
        allowed_ips: Vec<ipnet::IpNet>,
        /// A file holding the base64 pre-shared key.
        #[arg(long, value_hint = clap::ValueHint::FilePath)]
        psk_file: Option<PathBuf>,
        /// The protocol it speaks: the native suite (`concentrator connect`) or WireGuard
        /// (stock WireGuard apps and wg-quick).
        #[arg(long, value_enum, default_value_t = PeerProtocol::Native)]
        protocol: PeerProtocol,
    },
    /// Print a ready wg-quick client config for a peer (Address, DNS, the server's key,
    /// public_endpoint, AllowedIPs from the routes it is pushed), or its QR code.
    Config {
        /// The peer's base64 public key.
        public_key: String,
        /// Show the config as a QR code in the terminal (for the WireGuard phone apps).
        #[arg(long)]
        qr: bool,
        /// The client's private key file, to fill in PrivateKey (the server never has it;
        /// without this, PrivateKey is a placeholder to replace).
        #[arg(long, value_hint = clap::ValueHint::FilePath)]
        private_key_file: Option<PathBuf>,
    },
    /// Remove a peer: its session ends, its address returns to the pool.
    Remove {
        /// Its base64 public key.
        public_key: String,
    },
}

/// The protocols a peer can speak.
#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum PeerProtocol {
    Native,
    #[value(name = "wireguard")]
    WireGuard,
}

impl PeerProtocol {
    /// The protocol's name in config files and on the control socket.
    pub fn name(self) -> &'static str {
        match self {
            PeerProtocol::Native => concentrator::proto::suite::Suite::Native.name(),
            PeerProtocol::WireGuard => concentrator::proto::suite::Suite::WireGuard.name(),
        }
    }
}

#[derive(Subcommand)]
pub enum RegistryAction {
    /// Move the [[peer]] entries of a server configuration file into the fleet's registry,
    /// with their addresses and pre-shared keys (sealed); peers already there are skipped.
    /// Then delete them from the file.
    Import {
        /// The server configuration file holding the peers.
        #[arg(value_hint = clap::ValueHint::FilePath)]
        file: PathBuf,
    },
}

/// The shells completions are generated for.
#[derive(Clone, Copy, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

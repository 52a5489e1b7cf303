//! The binary's edge: arguments, logging, exit codes.
#![forbid(unsafe_code)]

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Parser;

mod cli;

use cli::args::{Args, Command, PeerAction, RegistryAction};

/// Selects the log format: `text` (the default) or `json` (one JSON object per line).
const LOG_FORMAT_ENV: &str = "CONCENTRATOR_LOG_FORMAT";

/// How log lines are written.
#[derive(Debug, PartialEq, Eq)]
enum LogFormat {
    /// Human-readable lines; coloured only when `colour`.
    Text { colour: bool },
    /// One JSON object per line, for log shippers.
    Json,
}

/// The format from `CONCENTRATOR_LOG_FORMAT`, whether stderr is a terminal and `NO_COLOR`
/// (any non-empty value turns colour off, as https://no-color.org says).
fn log_format(
    format: Option<&str>,
    stderr_is_terminal: bool,
    no_color: Option<&str>,
) -> anyhow::Result<LogFormat> {
    match format.map(str::trim) {
        None | Some("") | Some("text") => Ok(LogFormat::Text {
            colour: stderr_is_terminal && no_color.is_none_or(str::is_empty),
        }),
        Some("json") => Ok(LogFormat::Json),
        Some(other) => anyhow::bail!(
            "{LOG_FORMAT_ENV}={other:?} is not a log format; use `text` (the default) or `json`"
        ),
    }
}

/// Installs the logger on stderr; returns the format chosen.
fn init_logging() -> anyhow::Result<LogFormat> {
    let format = std::env::var(LOG_FORMAT_ENV).ok();
    let no_color = std::env::var("NO_COLOR").ok();
    let format = log_format(
        format.as_deref(),
        std::io::stderr().is_terminal(),
        no_color.as_deref(),
    )?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("CONCENTRATOR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text { colour } => builder.with_ansi(colour).init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(format)
}

fn main() -> ExitCode {
    concentrator::sys::mem::map_large_allocations_separately();
    let log_format = match init_logging() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let args = Args::parse();
    let result = match args.command {
        Some(Command::Connect {
            config,
            no_offloads,
        }) => cli::connect::run(&config, no_offloads),
        Some(Command::Check { config, client }) => match (config, client) {
            (Some(server), _) => cli::check::server(&server),
            (None, Some(client)) => cli::check::client(&client),
            (None, None) => unreachable!("clap requires --config or --client"),
        },
        Some(Command::Genkey) => cli::keys::genkey(),
        Some(Command::Pubkey) => cli::keys::pubkey(),
        Some(Command::Show {
            json,
            socket,
            limit,
            offset,
            fleet,
        }) => {
            if fleet {
                cli::show::fleet(socket.as_deref(), json)
            } else {
                cli::show::run(socket.as_deref(), json, offset, limit)
            }
        }
        Some(Command::Registry { socket, action }) => match action {
            RegistryAction::Import { file } => cli::peer::import(socket.as_deref(), &file),
        },
        Some(Command::Peer { socket, action }) => match action {
            PeerAction::Add {
                public_key,
                address,
                address6,
                allowed_ips,
                psk_file,
                protocol,
            } => cli::peer::add(
                socket.as_deref(),
                &public_key,
                (address, address6),
                allowed_ips,
                psk_file.as_deref(),
                protocol,
            ),
            PeerAction::Remove { public_key } => cli::peer::remove(socket.as_deref(), &public_key),
            PeerAction::Config {
                public_key,
                qr,
                private_key_file,
            } => cli::peer::config(
                socket.as_deref(),
                &public_key,
                qr,
                private_key_file.as_deref(),
            ),
        },
        Some(Command::Save { config, socket }) => {
            cli::save::run(socket.as_deref(), config.as_deref())
        }
        Some(Command::Reload { json, socket }) => cli::reload::run(socket.as_deref(), json),
        Some(Command::Completions { shell }) => cli::docs::completions(shell),
        Some(Command::Manpages { dir }) => cli::docs::manpages(&dir),
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
            // With JSON logs, stderr stays all JSON lines: the reason for exiting is one too.
            if log_format == LogFormat::Json {
                tracing::error!("{e:#}");
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert_eq!(
            log_format(None, true, None).unwrap(),
            LogFormat::Text { colour: true }
        );
        assert_eq!(
            log_format(None, false, None).unwrap(),
            LogFormat::Text { colour: false }
        );
        assert_eq!(
            log_format(Some("text"), true, Some("1")).unwrap(),
            LogFormat::Text { colour: false }
        );
        // An empty NO_COLOR does not count (no-color.org).
        assert_eq!(
            log_format(Some(""), true, Some("")).unwrap(),
            LogFormat::Text { colour: true }
        );
    }

    #[test]
    fn json_and_unknown_formats() {
        assert_eq!(
            log_format(Some("json"), true, None).unwrap(),
            LogFormat::Json
        );
        let err = log_format(Some("xml"), false, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("CONCENTRATOR_LOG_FORMAT=\"xml\""), "{err}");
        assert!(err.contains("`json`"), "{err}");
    }

    #[test]
    fn command_line_definitions_are_consistent() {
        use clap::CommandFactory as _;
        Args::command().debug_assert();
    }
}

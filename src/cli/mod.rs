//! One file per subcommand; the command line itself is in `args`.
pub mod args;
pub mod check;
pub mod connect;
pub mod ctl;
pub mod docs;
pub mod keys;
pub mod peer;
pub mod reload;
pub mod save;
pub mod serve;
pub mod show;

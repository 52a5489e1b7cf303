//! One file per subcommand.
pub mod connect;
pub mod ctl;
pub mod keys;
pub mod peer;
pub mod reload;
pub mod serve;
pub mod show;

//! One file per subcommand.
pub mod connect;
pub mod keys;
pub mod serve;

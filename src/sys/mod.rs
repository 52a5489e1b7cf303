//! The kernel edge: everything that talks to Linux directly.
//!
//! - [`tun`]: multi-queue TUN devices, offloads, blocking read/write helpers.
//! - [`udp`]: `SO_REUSEPORT` UDP sockets, GRO/GSO options, raw sockaddr conversion.
//! - [`link`]: links, addresses, routes and forwarding through `ip` (iproute2).
//! - [`nft`]: masquerade for client subnets through `nft` (nftables).
//! - [`dns`]: a link's DNS servers through `resolvectl` or `resolvconf`.
//! - [`clock`]: monotonic and wall-clock time.
//! - [`error`]: [`SysError`], with messages that say what to do.
//!
//! This is the only module of the crate with `unsafe`; each block carries a `SAFETY:` note.

pub mod clock;
pub mod cmsg;
pub mod dns;
pub mod error;
pub mod link;
pub mod mem;
pub mod netns;
pub mod nft;
pub mod notify;
pub mod poll;
pub mod privs;
pub mod signals;
#[cfg(test)]
mod testutil;
pub mod tun;
pub mod udp;
pub mod uring;

pub use error::SysError;

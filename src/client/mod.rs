//! The client as a library. Its data plane is the server's: one worker of
//! [`crate::server::dataplane`] on the client's TUN queue and UDP socket ([`dataplane`]), with
//! a session table of one entry, its server, behind every address and under the client's own
//! session ([`crate::proto::client::Client::session`]). So packets leave through the server's
//! egress path (the fair queue with `fair_queue`, super-packets cut and sealed into one
//! UDP_SEGMENT send) and arrive through its ingress path (GRO batches opened in place and
//! coalesced into TUN writes), and the gate, in the client role, passes the server's
//! handshake messages and pushes to the control thread that drives the
//! [`crate::proto::client::Client`].
#![forbid(unsafe_code)]

pub mod dataplane;

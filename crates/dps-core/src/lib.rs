//! `dps-core` is the domain of OpenDPS, with no I/O: no sockets, no files, no OpenSSL, no JSON.
//!
//! Today it holds the TLS contract as data (`tls`): the twelve DPS cipher suites, the named
//! server-preference profiles, protocol versions, the facts a handshake leaves behind
//! (`HandshakeFacts`), and the readiness evaluator that answers "would this client still get in
//! under profile X / minTlsVersion Y" from those facts alone.
//!
//! Invariant: nothing here performs I/O or depends on a wire-format or TLS library; adapters
//! convert to and from these types at the edge.

pub mod tls;

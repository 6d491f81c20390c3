//! `dps-tls`: every TLS listener of OpenDPS goes through this crate, and only this crate touches
//! `openssl::ssl` and `tokio-openssl`.
//!
//! - [`TlsPolicy`] is one value per listener (profile, versions, groups, client-certificate
//!   request); [`build_context`] turns it plus [`ServerCredentials`] into an OpenSSL context, in
//!   one function, so no OpenSSL knob is set anywhere else.
//! - [`CredentialSource`] yields server credentials, from operator files or the built-in CA
//!   ([`builtin_ca`]); [`ServerTls`] loads, validates and only then swaps them into every
//!   listener at once, and rolls the session-ticket key; nodes sharing a store share their
//!   ticket keys instead ([`ticket_keys`], set through OpenSSL's ticket-key callback).
//! - [`ListenerAcceptor::accept`] runs one handshake under a timeout and returns the stream with
//!   its [`HandshakeFacts`](dps_core::tls::HandshakeFacts) (what the client offered, what was
//!   negotiated) and the client's certificates.
//!
//! **Architecture invariant (authentication boundary):** the TLS layer proves *possession* of a
//! client key (OpenSSL checks CertificateVerify) and accepts *any* client chain; it never decides
//! trust. Trust is decided later, against an enrollment. See `context.rs`, `accept_any_chain`.

mod accept;
pub mod builtin_ca;
pub mod client;
mod client_hello;
mod context;
mod credentials;
mod error;
#[allow(unsafe_code)]
mod ffi;
mod server_tls;
pub mod ticket_keys;

pub use accept::{HandshakeFailure, ListenerAcceptor, TlsConnection};
pub use context::{build_context, TlsPolicy};
pub use credentials::{CredentialFiles, ServerCredentials};
pub use error::TlsError;
pub use server_tls::{unix, CredentialSource, DisplayChain, ListenerSpec, ServerTls};
pub use ticket_keys::{TicketKey, TicketKeyRing, TicketKeys};

/// The OpenSSL this binary runs with, as OpenSSL names itself (`OpenSSL 3.0.19 27 Jan 2026`): the
/// system's library, or the one built in with the `vendored-openssl` feature (docs/tls.md,
/// "Which OpenSSL").
pub fn openssl_version() -> &'static str {
    openssl::version::version()
}

/// Re-exported so adapters can name the stream type without depending on tokio-openssl.
pub type TlsStream<S> = tokio_openssl::SslStream<S>;

#[cfg(test)]
mod tests {
    /// The `vendored-openssl` build runs the 3.5 LTS series it pins, not the system's library.
    #[cfg(feature = "vendored-openssl")]
    #[test]
    fn the_vendored_build_runs_openssl_3_5() {
        let v = super::openssl_version();
        assert!(v.starts_with("OpenSSL 3.5."), "{v}");
    }

    #[test]
    fn the_version_names_openssl_3() {
        let v = super::openssl_version();
        assert!(v.starts_with("OpenSSL 3."), "{v}");
    }
}

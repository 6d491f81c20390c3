//! Session-ticket keys held by the application instead of OpenSSL, so that every node of a
//! shared store encrypts tickets under the same key and one node resumes another's sessions
//! (docs/tls.md, "Handshake behaviour").
//!
//! A [`TicketKeyRing`] holds the current key (encrypts new tickets, decrypts) and the previous
//! one (decrypts only; a ticket under it is accepted and replaced by a fresh one). Listeners
//! built with a ring read it on every handshake through OpenSSL's ticket-key callback
//! (`ffi::install_ticket_key_callback`), so a rotation is one swap: no context is rebuilt. A
//! ticket under neither key is a full handshake, never a failure.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use zeroize::Zeroizing;

use crate::error::TlsError;

/// Bytes of a key name (OpenSSL's `key_name`, sent in the clear in every ticket).
pub const NAME_LEN: usize = 16;
/// Bytes of one ticket key: name (16), AES-256-CBC key (32), HMAC-SHA256 key (32); the same
/// layout as OpenSSL's own ticket keys.
pub const KEY_LEN: usize = NAME_LEN + 32 + 32;

/// One session-ticket key. Secret: its `Debug` shows the name only, and it is wiped on drop.
#[derive(Clone)]
pub struct TicketKey(Zeroizing<[u8; KEY_LEN]>);

impl TicketKey {
    /// A fresh random key (OpenSSL's CSPRNG).
    pub fn generate() -> Result<TicketKey, TlsError> {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        openssl::rand::rand_bytes(k.as_mut()).map_err(TlsError::openssl("ticket key"))?;
        Ok(TicketKey(k))
    }

    /// A key from its [`KEY_LEN`] bytes (as stored by [`Self::as_bytes`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<TicketKey, TlsError> {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        if bytes.len() != KEY_LEN {
            return Err(TlsError::Invalid(format!("a ticket key is {KEY_LEN} bytes, not {}", bytes.len())));
        }
        k.copy_from_slice(bytes);
        Ok(TicketKey(k))
    }

    /// The key's bytes (secret).
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_ref()
    }

    /// The key name tickets carry in the clear.
    pub fn name(&self) -> &[u8] {
        self.0.get(..NAME_LEN).unwrap_or_default()
    }

    pub(crate) fn aes_key(&self) -> &[u8] {
        self.0.get(NAME_LEN..NAME_LEN + 32).unwrap_or_default()
    }

    pub(crate) fn hmac_key(&self) -> &[u8] {
        self.0.get(NAME_LEN + 32..).unwrap_or_default()
    }

    /// The name as hex, for log lines (the name is no secret).
    pub fn name_hex(&self) -> String {
        dps_core::hex::lower(self.name())
    }
}

impl fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketKey").field("name", &self.name_hex()).finish_non_exhaustive()
    }
}

impl PartialEq for TicketKey {
    fn eq(&self, other: &Self) -> bool {
        openssl::memcmp::eq(self.as_bytes(), other.as_bytes())
    }
}

/// The keys in use: the current one and, for decryption only, the previous one.
#[derive(Clone, Debug, PartialEq)]
pub struct TicketKeys {
    pub current: TicketKey,
    pub previous: Option<TicketKey>,
}

/// Which key decrypts a ticket.
pub(crate) enum Found<'a> {
    Current(&'a TicketKey),
    /// Accepted; OpenSSL then issues a new ticket under the current key.
    Previous(&'a TicketKey),
}

impl TicketKeys {
    pub(crate) fn find(&self, name: &[u8]) -> Option<Found<'_>> {
        if self.current.name() == name {
            return Some(Found::Current(&self.current));
        }
        self.previous.as_ref().filter(|p| p.name() == name).map(Found::Previous)
    }
}

/// The ticket keys every listener of a [`ServerTls`](crate::ServerTls) reads, swapped as a
/// whole by [`Self::set`].
#[derive(Debug)]
pub struct TicketKeyRing(ArcSwap<TicketKeys>);

impl TicketKeyRing {
    pub fn new(keys: TicketKeys) -> Arc<TicketKeyRing> {
        Arc::new(TicketKeyRing(ArcSwap::from_pointee(keys)))
    }

    /// Replaces the keys (handshakes already past the ticket step are unaffected). `true` if
    /// they differ from the ones in use.
    pub fn set(&self, keys: TicketKeys) -> bool {
        if **self.0.load() == keys {
            return false;
        }
        self.0.store(Arc::new(keys));
        true
    }

    /// The keys in use.
    pub fn get(&self) -> Arc<TicketKeys> {
        self.0.load_full()
    }
}

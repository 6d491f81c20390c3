//! The one place with `unsafe`: OpenSSL calls rust-openssl does not wrap.

use std::os::raw::{c_char, c_int, c_uchar, c_void};

use foreign_types::ForeignTypeRef;
use openssl::error::ErrorStack;
use openssl::ssl::{SslContextBuilder, SslContextRef, SslRef};
use openssl_sys::{EVP_CIPHER_CTX, EVP_MAC_CTX, OSSL_PARAM, SSL, SSL_CTX, X509_STORE_CTX};

use crate::ticket_keys::Found;

/// The raw body of ClientHello extension `ext_type`, inside the ClientHello callback.
pub(crate) fn client_hello_ext(ssl: &SslRef, ext_type: u16) -> Option<&[u8]> {
    let mut out: *const std::os::raw::c_uchar = std::ptr::null();
    let mut len: usize = 0;
    // SAFETY: `ssl` is a live SSL handle for the duration of the borrow. OpenSSL only reads it and
    // sets `out`/`len` to a buffer owned by the SSL object that stays valid while the ClientHello
    // is being processed; the returned slice borrows `ssl`, so it cannot outlive that.
    let found =
        unsafe { openssl_sys::SSL_client_hello_get0_ext(ssl.as_ptr(), u32::from(ext_type), &mut out, &mut len) };
    if found != 1 || out.is_null() {
        return None;
    }
    // SAFETY: OpenSSL returned a non-null pointer to `len` readable bytes (see above).
    Some(unsafe { std::slice::from_raw_parts(out, len) })
}

/// `SSL_get_negotiated_group` (a macro over `SSL_ctrl` in OpenSSL 3.0): the NID of the group
/// of the key exchange, for TLS 1.2 ECDHE and TLS 1.3 alike; `None` for RSA key exchange.
pub(crate) fn negotiated_group_nid(ssl: &SslRef) -> Option<i32> {
    const SSL_CTRL_GET_NEGOTIATED_GROUP: std::os::raw::c_int = 134;
    // SAFETY: SSL_ctrl with this command only reads the SSL object's session state and returns
    // an integer; the pointer argument is unused (null).
    let nid = unsafe { openssl_sys::SSL_ctrl(ssl.as_ptr(), SSL_CTRL_GET_NEGOTIATED_GROUP, 0, std::ptr::null_mut()) };
    i32::try_from(nid).ok().filter(|n| *n > 0)
}

/// `SSL_set_session` on a client connection: offer `session` for resumption.
///
/// rust-openssl marks this `unsafe` because OpenSSL requires the session to belong to the same
/// `SSL_CTX` as `ssl`. The only caller, `client::Client::connect`, checks that the session was
/// made by the very same `Client` (one context per `Client`) before calling.
pub(crate) fn resume_session(
    ssl: &mut openssl::ssl::SslRef,
    session: &openssl::ssl::SslSessionRef,
) -> Result<(), openssl::error::ErrorStack> {
    // SAFETY: the caller guarantees that `session` was negotiated on a connection created from
    // the same SslContext as `ssl` (see above); OpenSSL takes its own reference to the session.
    unsafe { ssl.set_session(session) }
}

/// SECURITY-CRITICAL (docs/tls.md, "Mutual TLS"; see `context::accept_any_chain`). Replaces
/// OpenSSL's whole verification of a client chain (`X509_verify_cert`: issuer look-ups in the
/// context's shared store, chain building, signature checks of the chain) with a callback that
/// accepts it as sent. Trust is decided later against an enrollment, which checks every
/// signature of the chain itself. The client's CertificateVerify (possession of the leaf's key) is not
/// part of this step: OpenSSL still checks it and fails the handshake when it does not verify.
pub(crate) fn accept_client_chain_unverified(b: &mut SslContextBuilder) {
    // SAFETY: stores a function pointer (and a null argument it never reads) in a context we own
    // and are still building; the callback is a plain function that lives as long as the program.
    unsafe { SSL_CTX_set_cert_verify_callback(b.as_ptr(), Some(accept_chain), std::ptr::null_mut()) }
}

/// Called by OpenSSL in place of `X509_verify_cert` for each client chain: 1, accepted. It reads
/// neither argument, so the store context keeps the `X509_V_OK` it was initialised with.
extern "C" fn accept_chain(_store: *mut X509_STORE_CTX, _arg: *mut c_void) -> c_int {
    1
}

/// OpenSSL's ticket-key callback type (`SSL_CTX_set_tlsext_ticket_key_evp_cb`, OpenSSL 3.0).
type TicketKeyCallback =
    unsafe extern "C" fn(*mut SSL, *mut c_uchar, *mut c_uchar, *mut EVP_CIPHER_CTX, *mut EVP_MAC_CTX, c_int) -> c_int;

/// OpenSSL's certificate-verification callback type (`SSL_CTX_set_cert_verify_callback`).
type CertVerifyCallback = unsafe extern "C" fn(*mut X509_STORE_CTX, *mut c_void) -> c_int;

extern "C" {
    // All three exported by OpenSSL 3.0 (ssl.h, params.h) and not declared by openssl-sys.
    fn SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx: *mut SSL_CTX, cb: Option<TicketKeyCallback>) -> c_int;
    fn SSL_CTX_set_cert_verify_callback(ctx: *mut SSL_CTX, cb: Option<CertVerifyCallback>, arg: *mut c_void);
    fn OSSL_PARAM_construct_utf8_string(key: *const c_char, buf: *mut c_char, bsize: usize) -> OSSL_PARAM;
}

/// The IV length of AES-256-CBC, the cipher tickets are encrypted with (as OpenSSL's own).
const IV_LEN: usize = 16;

/// Makes the context being built take its session-ticket keys from the
/// [`TicketKeyRing`](crate::TicketKeyRing) in its ex_data (`context::ticket_ring_index`)
/// instead of its own random ones.
pub(crate) fn install_ticket_key_callback(b: &mut SslContextBuilder) -> Result<(), ErrorStack> {
    // SAFETY: stores a function pointer in a context we own and are still building; the
    // callback is a plain function that lives as long as the program.
    let ok = unsafe { SSL_CTX_set_tlsext_ticket_key_evp_cb(b.as_ptr(), Some(ticket_key_callback)) };
    if ok == 1 {
        Ok(())
    } else {
        Err(ErrorStack::get())
    }
}

/// Called by OpenSSL for every ticket it issues (`enc` = 1) or receives (`enc` = 0). Encrypting:
/// name the current key, draw a random IV, set up AES-256-CBC and HMAC-SHA256 with its keys
/// (what OpenSSL does with its own key). Decrypting: find the key the ticket names; 1 for the
/// current key, 2 for the previous one (accept, then issue a new ticket), 0 for an unknown name
/// (full handshake). Every failure is 0: no ticket, or a full handshake, never a failed one.
extern "C" fn ticket_key_callback(
    ssl: *mut SSL,
    key_name: *mut c_uchar,
    iv: *mut c_uchar,
    cipher: *mut EVP_CIPHER_CTX,
    mac: *mut EVP_MAC_CTX,
    enc: c_int,
) -> c_int {
    const NAME: usize = crate::ticket_keys::NAME_LEN;
    if ssl.is_null() || key_name.is_null() || iv.is_null() || cipher.is_null() || mac.is_null() {
        return 0;
    }
    // SAFETY: OpenSSL passes the live SSL handle of the handshake in progress; its SSL_CTX
    // outlives the handshake, and the reference does not escape this call.
    let ctx = unsafe { openssl_sys::SSL_get_SSL_CTX(ssl) };
    if ctx.is_null() {
        return 0;
    }
    // SAFETY: as above: a live context, only read (its ex_data) during this call.
    let ctx = unsafe { SslContextRef::from_ptr(ctx) };
    let Some(ring) = ctx.ex_data(crate::context::ticket_ring_index()) else { return 0 };
    let keys = ring.get();
    if enc == 1 {
        let key = &keys.current;
        // SAFETY: OpenSSL hands buffers of 16 bytes for the key name and EVP_MAX_IV_LENGTH (16)
        // for the IV, both writable for this call.
        let (name_out, iv_out) =
            unsafe { (std::slice::from_raw_parts_mut(key_name, NAME), std::slice::from_raw_parts_mut(iv, IV_LEN)) };
        if openssl::rand::rand_bytes(iv_out).is_err() {
            return 0;
        }
        name_out.copy_from_slice(key.name());
        // SAFETY: `cipher` and `mac` are the contexts OpenSSL allocated for this ticket; the key
        // and IV buffers are valid for the lengths AES-256-CBC reads (32 and 16 bytes).
        let ok = unsafe {
            openssl_sys::EVP_EncryptInit_ex(
                cipher,
                openssl_sys::EVP_aes_256_cbc(),
                std::ptr::null_mut(),
                key.aes_key().as_ptr(),
                iv_out.as_ptr(),
            ) == 1
                && set_hmac_key(mac, key.hmac_key())
        };
        return c_int::from(ok);
    }
    // SAFETY: on decryption OpenSSL passes the ticket's 16-byte key name and its 16-byte IV.
    let (name, iv_in) = unsafe { (std::slice::from_raw_parts(key_name, NAME), std::slice::from_raw_parts(iv, IV_LEN)) };
    let (key, answer) = match keys.find(name) {
        Some(Found::Current(k)) => (k, 1),
        Some(Found::Previous(k)) => (k, 2),
        None => return 0,
    };
    // SAFETY: as for encryption, with the ticket's own IV.
    let ok = unsafe {
        set_hmac_key(mac, key.hmac_key())
            && openssl_sys::EVP_DecryptInit_ex(
                cipher,
                openssl_sys::EVP_aes_256_cbc(),
                std::ptr::null_mut(),
                key.aes_key().as_ptr(),
                iv_in.as_ptr(),
            ) == 1
    };
    if ok {
        answer
    } else {
        0
    }
}

/// Sets HMAC-SHA256 with `key` on the MAC context OpenSSL made for a ticket.
///
/// # Safety
/// `mac` must be a live `EVP_MAC_CTX` for HMAC (the one OpenSSL passes to the ticket callback).
unsafe fn set_hmac_key(mac: *mut EVP_MAC_CTX, key: &[u8]) -> bool {
    let mut digest = *b"SHA256\0";
    // SAFETY: the parameters point at `key` and `digest`, both alive until the call returns;
    // OpenSSL copies what it keeps and only reads the key (the cast to *mut is its signature).
    unsafe {
        let params = [
            openssl_sys::OSSL_PARAM_construct_octet_string(
                c"key".as_ptr(),
                key.as_ptr().cast_mut().cast::<c_void>(),
                key.len(),
            ),
            OSSL_PARAM_construct_utf8_string(c"digest".as_ptr(), digest.as_mut_ptr().cast::<c_char>(), 0),
            openssl_sys::OSSL_PARAM_construct_end(),
        ];
        openssl_sys::EVP_MAC_CTX_set_params(mac, params.as_ptr()) == 1
    }
}

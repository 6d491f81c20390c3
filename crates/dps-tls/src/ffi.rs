//! The one place with `unsafe`: OpenSSL calls rust-openssl does not wrap.

use foreign_types::ForeignTypeRef;
use openssl::ssl::SslRef;

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

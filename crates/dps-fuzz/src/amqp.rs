//! The AMQP device API's pure layers, through `dps_amqp::fuzz` (which holds the invariants, so
//! dps-amqp's own corpus test checks the same): the protocol header and the frame boundaries
//! that follow it, the SASL exchange (frame codec and state machine), and request messages
//! with link addresses.

/// The bytes are a stream as a client opens it: the 8-byte protocol header (sniffed on every
/// prefix), then AMQP frames, whose boundaries `replay::FrameGuard` follows (fed in two pieces
/// split where the last byte says, and byte by byte).
pub fn amqp_header(data: &[u8]) {
    dps_amqp::fuzz::header_sniff(data);
    let split = data.last().copied().unwrap_or(0);
    dps_amqp::fuzz::frame_guard(&[&[split], data].concat());
}

/// SASL frames back to back as a client sends them; the byte after each frame that asks the
/// device API picks its answer.
pub fn amqp_sasl(data: &[u8]) {
    dps_amqp::fuzz::sasl_exchange(data);
}

/// A request message's payload (one delivery) through the DPS mapping and its answers; the
/// bytes as a link address too.
pub fn amqp_mapping(data: &[u8]) {
    dps_amqp::fuzz::message_mapping(data);
}

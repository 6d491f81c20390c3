//! SASL in front of AMQP (docs/amqp.md, "SASL"): the frame codec and the state machine are
//! pure and fuzzed; `driver` runs them on a socket.

pub(crate) mod driver;
pub mod frame;
pub mod machine;

pub use driver::SaslLimits;
pub use machine::{Identity, SaslCredential, SaslServer, Step};

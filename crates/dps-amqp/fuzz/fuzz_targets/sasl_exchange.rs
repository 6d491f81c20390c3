#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dps_amqp::fuzz::sasl_exchange(data));

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dps_fuzz::amqp_mapping(data));

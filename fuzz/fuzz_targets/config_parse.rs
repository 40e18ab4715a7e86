//! Configuration text, URLs and environment overrides come from operators: any input must give
//! a configuration or a `BusError::Config`, never a panic.
#![no_main]

use hubbus::{BusConfig, BusError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for result in [
        BusConfig::from_toml_str(text),
        BusConfig::from_url(text),
        BusConfig::default().with_env([("HUBBUS_NATS__URL".to_owned(), text.to_owned())]),
    ] {
        if let Err(error) = result {
            assert!(matches!(error, BusError::Config { .. }), "{error:?}");
        }
    }
});

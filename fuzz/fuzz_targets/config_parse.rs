//! Configuration text, URLs and environment variables come from operators: any input must give
//! a configuration or a `BusError::Config`, never a panic. The environment is fed raw bytes, as a
//! process's environment can hold names and values that are not Unicode.
#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use hubbus::{BusConfig, BusError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // `name=value` lines, as the environment would be written out.
    let vars: Vec<(OsString, OsString)> = data
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let at = line.iter().position(|&b| b == b'=')?;
            Some((
                OsString::from_vec(line[..at].to_vec()),
                OsString::from_vec(line[at + 1..].to_vec()),
            ))
        })
        .collect();
    let mut results = vec![
        BusConfig::from_env_vars(vars),
        BusConfig::from_env_vars([(OsString::from("HUBBUS_NATS__URL"), OsString::from_vec(data.to_vec()))]),
    ];
    if let Ok(text) = std::str::from_utf8(data) {
        results.push(BusConfig::from_toml_str(text));
        results.push(BusConfig::from_url(text));
        results.push(BusConfig::from_toml_and_env_vars(text, [("HUBBUS_KIND", "noop")]));
    }
    for result in results {
        if let Err(error) = result {
            assert!(matches!(error, BusError::Config { .. }), "{error:?}");
        }
    }
});

//! YAML text → `wsgate::config::parse_str` with a fixed environment. Must never panic,
//! whatever the text; errors are fine.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |name: &str| match name {
        "WSGATE_JWT_SECRET" => Some("fuzz-secret-0123456789abcdef0123".to_string()),
        "EMPTY" => Some(String::new()),
        _ => None,
    };
    if let Err(errors) = wsgate::config::parse_str(
        text,
        Path::new("fuzz.yaml"),
        Path::new("/nonexistent-wsgate-fuzz"),
        &env,
    ) {
        // Rendering the messages is part of the contract (every problem, with its path).
        let _ = errors.to_string();
    }
});

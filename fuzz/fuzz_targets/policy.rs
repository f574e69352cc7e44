//! Policy parsing must never panic, whatever the bytes: `cargo +nightly fuzz run policy`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::Policy;
use tollgate::policy::Format;

fuzz_target!(|data: &[u8]| {
    for format in [None, Some(Format::Toml), Some(Format::Json)] {
        if let Ok(policy) = Policy::from_bytes(data, format) {
            // An accepted policy must also compile into an engine and summarise.
            let _ = policy.summary();
            let _ = tollgate::Engine::new(policy);
        }
    }
});

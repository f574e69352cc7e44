//! The SSE decoder must never panic, and where the bytes are cut into chunks must never change
//! what it decodes: `cargo +nightly fuzz run sse`.
//!
//! The first two input bytes choose the split point (modulo the length) and the size limit (a
//! small one exercises the limit errors; 255 means the default); the rest is the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::transport::sse::{DEFAULT_MAX_SIZE, Decoder, Event, TooLarge, Truncated};

type Run = (
    Vec<Event>,
    Option<TooLarge>,
    Result<(), Truncated>,
    Option<String>,
    Option<u64>,
);

fn run<'a>(max_size: usize, chunks: impl IntoIterator<Item = &'a [u8]>) -> Run {
    let mut decoder = Decoder::with_max_size(max_size);
    let mut events = Vec::new();
    let mut error = None;
    for chunk in chunks {
        if let Err(e) = decoder.push(chunk, &mut events) {
            error = Some(e);
            break;
        }
    }
    let id = decoder.last_event_id().map(str::to_owned);
    let retry = decoder.reconnection_time();
    (events, error, decoder.finish(), id, retry)
}

fuzz_target!(|input: &[u8]| {
    let [split, limit, stream @ ..] = input else {
        return;
    };
    let max_size = if *limit == 255 {
        DEFAULT_MAX_SIZE
    } else {
        usize::from(*limit)
    };
    let whole = run(max_size, [stream]);
    let (a, b) = stream.split_at(usize::from(*split) % (stream.len() + 1));
    assert_eq!(run(max_size, [a, b]), whole, "split at {}", a.len());
    // Three-way: the split point, and again half-way through the rest.
    let (b1, b2) = b.split_at(b.len() / 2);
    assert_eq!(
        run(max_size, [a, b1, b2]),
        whole,
        "split at {} and {}",
        a.len(),
        a.len() + b1.len()
    );
    for event in &whole.0 {
        assert_ne!(
            event.event.as_deref(),
            Some(""),
            "an empty type reads as None"
        );
        if let Some(id) = &event.id {
            assert!(
                !id.is_empty() && !id.contains('\0'),
                "ids are never empty or hold NUL"
            );
        }
    }
});

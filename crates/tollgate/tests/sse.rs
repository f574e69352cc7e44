//! The server-sent events decoder through its public API: one test per rule of the WHATWG HTML
//! "Interpreting an event stream" algorithm (section 9.2.6), a few vectors shaped like the
//! web-platform-tests `eventsource/format-*` cases, OpenAI-style streams, the size limits, and
//! properties: any split of the bytes into chunks gives the events of the whole buffer.

use proptest::prelude::*;
use tollgate::transport::sse::{DEFAULT_MAX_SIZE, Decoder, Event, TooLarge, Truncated};

/// Everything a decoding run produces: the events, the first `push` error, the `finish` verdict.
#[derive(Debug, PartialEq)]
struct Run {
    events: Vec<Event>,
    error: Option<TooLarge>,
    end: Result<(), Truncated>,
    last_id: Option<String>,
    retry: Option<u64>,
}

fn run_chunks<'a>(max_size: usize, chunks: impl IntoIterator<Item = &'a [u8]>) -> Run {
    let mut decoder = Decoder::with_max_size(max_size);
    let mut events = Vec::new();
    let mut error = None;
    for chunk in chunks {
        if let Err(e) = decoder.push(chunk, &mut events) {
            error = Some(e);
            break;
        }
    }
    let last_id = decoder.last_event_id().map(str::to_owned);
    let retry = decoder.reconnection_time();
    Run {
        events,
        error,
        end: decoder.finish(),
        last_id,
        retry,
    }
}

fn decode_whole(bytes: &[u8]) -> Run {
    run_chunks(DEFAULT_MAX_SIZE, [bytes])
}

fn one_byte_at_a_time(bytes: &[u8]) -> Run {
    run_chunks(DEFAULT_MAX_SIZE, bytes.chunks(1))
}

/// The data of each event, for the many tests that only look at data.
fn data(bytes: &[u8]) -> Vec<String> {
    let run = decode_whole(bytes);
    assert_eq!(run.error, None);
    assert_eq!(
        run,
        one_byte_at_a_time(bytes),
        "chunking changed the result"
    );
    run.events.into_iter().map(|e| e.data).collect()
}

fn message(data: &str) -> Event {
    Event {
        data: data.to_owned(),
        ..Event::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Line ends

#[test]
fn lf_crlf_and_cr_all_end_lines() {
    assert_eq!(data(b"data: a\n\n"), ["a"]);
    assert_eq!(data(b"data: a\r\n\r\n"), ["a"]);
    assert_eq!(data(b"data: a\r\r"), ["a"]);
    assert_eq!(data(b"data: a\rdata: b\ndata: c\r\n\r"), ["a\nb\nc"]);
}

#[test]
fn crlf_split_across_chunks_is_one_line_end() {
    // Were the LF a second line end, it would be a blank line dispatching "a" early.
    let run = run_chunks(
        DEFAULT_MAX_SIZE,
        [&b"data: a\r"[..], b"\ndata: b\r", b"\n\r", b"\n"],
    );
    assert_eq!(run.events, [message("a\nb")]);
    assert_eq!(run.end, Ok(()));
}

#[test]
fn cr_at_chunk_end_then_other_byte() {
    let run = run_chunks(DEFAULT_MAX_SIZE, [&b"data: a\r"[..], b"\rdata: b\r", b"\r"]);
    assert_eq!(run.events, [message("a"), message("b")]);
    assert_eq!(run.end, Ok(()));
}

#[test]
fn lf_cr_is_two_line_ends() {
    assert_eq!(data(b"data: a\n\r"), ["a"]);
}

// ---------------------------------------------------------------------------------------------
// UTF-8

#[test]
fn utf8_split_mid_sequence() {
    let text = "data: €😀 ok\n\n".as_bytes();
    for cut in 0..text.len() {
        let (a, b) = text.split_at(cut);
        let run = run_chunks(DEFAULT_MAX_SIZE, [a, b]);
        assert_eq!(run.events, [message("€😀 ok")], "split at {cut}");
    }
    assert_eq!(one_byte_at_a_time(text).events, [message("€😀 ok")]);
}

#[test]
fn invalid_utf8_becomes_replacement_characters() {
    // A lone continuation byte, a truncated 3-byte sequence before LF, an overlong encoding.
    assert_eq!(
        data(b"data: a\x80b\ndata: \xE2\x82\ndata: \xC0\xAF\n\n"),
        ["a\u{FFFD}b\n\u{FFFD}\n\u{FFFD}\u{FFFD}"]
    );
    // A truncated sequence in the field name makes it unknown, never a panic.
    assert_eq!(data(b"dat\xE2: x\ndata: y\n\n"), ["y"]);
}

#[test]
fn leading_bom_is_dropped_once() {
    assert_eq!(data(b"\xEF\xBB\xBFdata: a\n\n"), ["a"]);
    // web-platform-tests eventsource/format-bom-2: a second BOM is part of the first field name.
    assert_eq!(
        data("\u{FEFF}\u{FEFF}data:1\n\ndata:2\n\ndata:3\n\n".as_bytes()),
        ["2", "3"]
    );
    // A BOM later in the stream is not special.
    assert_eq!(data("data: a\n\n\u{FEFF}data: b\n\n".as_bytes()), ["a"]);
}

#[test]
fn bom_split_across_chunks() {
    let run = run_chunks(DEFAULT_MAX_SIZE, [&b"\xEF\xBB"[..], b"\xBFdata: a\n\n"]);
    assert_eq!(run.events, [message("a")]);
}

// ---------------------------------------------------------------------------------------------
// Fields

#[test]
fn comments_are_ignored() {
    assert_eq!(
        data(b": keep-alive\n\n:\ndata: a\n: inside\ndata: b\n\n"),
        ["a\nb"]
    );
    let run = decode_whole(b": OPENROUTER PROCESSING\n\n");
    assert_eq!(run.events, []);
    assert_eq!(run.end, Ok(()));
}

#[test]
fn one_leading_space_is_removed_from_the_value() {
    assert_eq!(
        data(b"data:a\n\ndata: a\n\ndata:  a\n\ndata:\ta\n\n"),
        ["a", "a", " a", "\ta"]
    );
}

#[test]
fn value_keeps_later_colons() {
    assert_eq!(data(b"data: {\"a\":\"b:c\"}\n\n"), ["{\"a\":\"b:c\"}"]);
}

#[test]
fn multi_line_data_joins_with_newlines() {
    assert_eq!(data(b"data: a\ndata: b\ndata\ndata: c\n\n"), ["a\nb\n\nc"]);
}

#[test]
fn line_without_colon_is_a_field_with_empty_value() {
    // `data` alone appends an empty line: the event dispatches with empty data.
    let run = decode_whole(b"data\n\n");
    assert_eq!(run.events, [message("")]);
    // `event` alone resets the type to the default.
    let run = decode_whole(b"event: a\nevent\ndata: x\n\n");
    assert_eq!(run.events[0].event, None);
}

#[test]
fn blank_data_dispatches_an_empty_string() {
    assert_eq!(data(b"data:\n\n"), [""]);
    assert_eq!(data(b"data: \n\n"), [""]);
    assert_eq!(data(b"data\ndata\n\n"), ["\n"]);
}

#[test]
fn blank_line_without_data_dispatches_nothing_and_resets_the_type() {
    let run = decode_whole(b"event: ping\n\ndata: x\n\n");
    assert_eq!(run.events, [message("x")]);
    assert_eq!(run.end, Ok(()));
}

#[test]
fn event_field_sets_the_type_for_one_event() {
    let run =
        decode_whole(b"event: delta\ndata: a\n\ndata: b\n\nevent: x\nevent: done\ndata: c\n\n");
    let types: Vec<_> = run.events.iter().map(|e| e.event.as_deref()).collect();
    assert_eq!(types, [Some("delta"), None, Some("done")]);
    assert_eq!(run.events[1].event_type(), "message");
}

#[test]
fn id_persists_across_events() {
    let run = decode_whole(b"id: 1\ndata: a\n\ndata: b\n\nid\ndata: c\n\nid: 2\n\n");
    let ids: Vec<_> = run.events.iter().map(|e| e.id.as_deref()).collect();
    assert_eq!(ids, [Some("1"), Some("1"), None]);
    // A blank line without data still commits the id.
    assert_eq!(run.last_id.as_deref(), Some("2"));
}

#[test]
fn id_with_nul_is_ignored() {
    let run = decode_whole(b"id: 1\n\nid: 2\0x\ndata: a\n\n");
    assert_eq!(run.events[0].id.as_deref(), Some("1"));
    assert_eq!(run.last_id.as_deref(), Some("1"));
    // NUL elsewhere is ordinary data (web-platform-tests eventsource/format-null-character).
    assert_eq!(data(b"data:\0\n\n"), ["\0"]);
}

#[test]
fn id_of_an_undispatched_block_is_not_committed() {
    let run = decode_whole(b"id: 1\ndata: a\n\nid: 2\ndata: b\n");
    assert_eq!(run.last_id.as_deref(), Some("1"));
    assert!(run.end.is_err());
}

#[test]
fn retry_sets_the_reconnection_time() {
    let run = decode_whole(b"retry: 3000\ndata: a\n\ndata: b\n\nretry: 0500\n\n");
    assert_eq!(run.events[0].retry, Some(3000));
    assert_eq!(
        run.events[1].retry, None,
        "retry belongs to the block that carried it"
    );
    assert_eq!(run.retry, Some(500));
}

#[test]
fn retry_with_non_digits_is_ignored() {
    let run = decode_whole(
        b"retry: 1000\n\nretry: 1000x\nretry: -1\nretry: 1.5\nretry:  7\nretry:\nretry: 99999999999999999999\ndata: a\n\n",
    );
    assert_eq!(run.events[0].retry, None);
    assert_eq!(run.retry, Some(1000));
}

#[test]
fn unknown_and_case_mismatched_fields_are_ignored() {
    // web-platform-tests eventsource/format-field-parsing.
    assert_eq!(
        data(
            b"data:\0\ndata:  2\rData:1\ndata\0:2\ndata:1\r\0data:4\nda-ta:3\rdata_5\ndata:3\rdata:\r\n data:32\ndata:4\n\n"
        ),
        ["\0\n 2\n1\n3\n\n4"]
    );
}

#[test]
fn web_platform_newlines_vector() {
    // web-platform-tests eventsource/format-newlines.
    assert_eq!(
        data(b"data:test\r\ndata\ndata:test\r\n\r"),
        ["test\n\ntest"]
    );
}

// ---------------------------------------------------------------------------------------------
// End of stream

#[test]
fn stream_ending_between_events_is_clean() {
    assert_eq!(decode_whole(b"").end, Ok(()));
    assert_eq!(decode_whole(b"data: a\n\n").end, Ok(()));
    assert_eq!(decode_whole(b"data: a\r\n\r\n").end, Ok(()));
    assert_eq!(decode_whole(b"data: a\n\n: bye\n").end, Ok(()));
}

#[test]
fn trailing_partial_line_is_truncated() {
    let run = decode_whole(b"data: a\n\ndata: {\"choi");
    assert_eq!(run.events, [message("a")]);
    assert_eq!(
        run.end,
        Err(Truncated {
            partial_line: 12,
            pending_event: false
        })
    );
}

#[test]
fn event_without_its_blank_line_is_truncated() {
    // web-platform-tests eventsource/format-data-before-final-empty-line: not dispatched.
    let run = decode_whole(b"data: a\n\ndata: b\n");
    assert_eq!(run.events, [message("a")]);
    assert_eq!(
        run.end,
        Err(Truncated {
            partial_line: 0,
            pending_event: true
        })
    );
    let message = run.end.expect_err("cut").to_string();
    assert!(
        message.contains("treat the response as failed"),
        "{message}"
    );
}

#[test]
fn any_field_starts_an_event() {
    assert!(decode_whole(b"event: x\n").end.is_err());
    assert!(decode_whole(b"id: 1\n").end.is_err());
    assert!(decode_whole(b"x-unknown\n").end.is_err());
}

// ---------------------------------------------------------------------------------------------
// Limits

#[test]
fn line_over_the_limit_is_an_error() {
    let line = b"data: 0123456789\n\n"; // 16 bytes before the LF
    assert_eq!(run_chunks(16, [&line[..]]).error, None);
    let whole = run_chunks(15, [&line[..]]);
    assert_eq!(whole.error, Some(TooLarge::Line { limit: 15 }));
    assert!(whole.end.is_err());
    // Seen as an unfinished line growing over several chunks: the same error.
    assert_eq!(run_chunks(15, line.chunks(3)).error, whole.error);
    // Even without the line end ever arriving.
    assert_eq!(
        run_chunks(15, line[..16].chunks(1)).error,
        Some(TooLarge::Line { limit: 15 })
    );
}

#[test]
fn comments_count_against_the_line_limit() {
    let run = run_chunks(8, [&b": a very long comment\n"[..]]);
    assert_eq!(run.error, Some(TooLarge::Line { limit: 8 }));
}

#[test]
fn event_over_the_limit_is_an_error() {
    // Each line fits; their sum does not.
    let stream = b"data: ok\n\ndata: 0123\ndata: 4567\ndata: 89\n\n";
    let run = run_chunks(11, [&stream[..]]);
    assert_eq!(
        run.events,
        [message("ok")],
        "events before the error are kept"
    );
    assert_eq!(run.error, Some(TooLarge::Event { limit: 11 }));
    assert!(run.end.is_err());
    // 12 bytes exactly fits: "0123\n4567\n89".
    let fits = b"data: 0123\ndata: 4567\ndata: 89\n\n";
    assert_eq!(
        run_chunks(12, [&fits[..]]).events,
        [message("0123\n4567\n89")]
    );
}

#[test]
fn failed_decoder_stays_failed() {
    let mut decoder = Decoder::with_max_size(4);
    let mut events = Vec::new();
    assert!(decoder.push(b"data: long\n", &mut events).is_err());
    assert_eq!(
        decoder.push(b"data: a\n\n", &mut events),
        Err(TooLarge::Line { limit: 4 })
    );
    assert!(events.is_empty());
    assert_eq!(
        decoder.finish(),
        Err(Truncated {
            partial_line: 0,
            pending_event: true
        })
    );
}

#[test]
fn default_limit_is_16_mib() {
    assert_eq!(Decoder::new().max_size(), 16 * 1024 * 1024);
    assert_eq!(Decoder::default().max_size(), DEFAULT_MAX_SIZE);
}

// ---------------------------------------------------------------------------------------------
// OpenAI streams

#[test]
fn openai_done_terminator() {
    let run = decode_whole(b"data: {\"x\":1}\n\ndata: [DONE]\n\n");
    assert_eq!(run.events.len(), 2);
    assert!(!run.events[0].is_done());
    assert!(run.events[1].is_done());
    assert_eq!(run.end, Ok(()));
}

/// A chat-completions stream shaped like OpenAI's, with `stream_options.include_usage`: a role
/// chunk, content deltas, the finish chunk, the usage chunk (empty `choices`), `[DONE]`.
const OPENAI_STREAM: &str = concat!(
    r#"data: {"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_eb9dce56a8","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_eb9dce56a8","choices":[{"index":0,"delta":{"content":"Bonjour"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    "\n\n",
    ": keep-alive\n\n",
    r#"data: {"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_eb9dce56a8","choices":[{"index":0,"delta":{"content":" — ça va ? 😀"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_eb9dce56a8","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_eb9dce56a8","choices":[],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}"#,
    "\n\n",
    "data: [DONE]\n\n",
);

/// Reads the decoded events the way the call API will: content, finish reason, usage, `[DONE]`.
fn read_chat(events: &[Event]) -> (String, Option<String>, Option<u64>, bool) {
    let mut content = String::new();
    let mut finish = None;
    let mut total_tokens = None;
    let mut done = false;
    for event in events {
        assert_eq!(event.event_type(), "message");
        if event.is_done() {
            done = true;
            continue;
        }
        let chunk: serde_json::Value = serde_json::from_str(&event.data).expect("chunk is JSON");
        if let Some(choice) = chunk["choices"].get(0) {
            if let Some(text) = choice["delta"]["content"].as_str() {
                content.push_str(text);
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                finish = Some(reason.to_owned());
            }
        }
        if let Some(total) = chunk["usage"]["total_tokens"].as_u64() {
            total_tokens = Some(total);
        }
    }
    (content, finish, total_tokens, done)
}

#[test]
fn openai_chat_completions_stream() {
    let bytes = OPENAI_STREAM.as_bytes();
    let whole = decode_whole(bytes);
    assert_eq!(whole.end, Ok(()));
    assert_eq!(whole.events.len(), 6);
    let (content, finish, total, done) = read_chat(&whole.events);
    assert_eq!(content, "Bonjour — ça va ? 😀");
    assert_eq!(finish.as_deref(), Some("stop"));
    assert_eq!(total, Some(29));
    assert!(done);
    // The way a TCP connection might cut it: odd-sized chunks, and one byte at a time.
    for size in [1, 2, 3, 7, 64, 100, 1500] {
        assert_eq!(
            run_chunks(DEFAULT_MAX_SIZE, bytes.chunks(size)),
            whole,
            "{size}"
        );
    }
    // The same stream with CRLF line ends.
    let crlf = OPENAI_STREAM.replace('\n', "\r\n");
    assert_eq!(decode_whole(crlf.as_bytes()).events, whole.events);
}

#[test]
fn openai_stream_cut_before_done_is_truncated() {
    let bytes = OPENAI_STREAM.as_bytes();
    let cut = &bytes[..bytes.len() - "ATA: [DONE]\n\n".len()];
    let run = decode_whole(cut);
    assert!(run.end.is_err());
    assert!(!run.events.iter().any(Event::is_done));
}

// ---------------------------------------------------------------------------------------------
// Properties

/// One generated event block.
#[derive(Debug, Clone)]
struct Block {
    comment: Option<String>,
    event: Option<String>,
    id: Option<String>,
    retry: Option<u64>,
    data: Vec<String>,
}

/// Values: no CR, LF or NUL; colons, spaces, BOMs and non-ASCII included.
fn value() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-z0-9 :{}\"é€😀\u{FEFF}\u{FFFD}]{0,12}").expect("valid regex")
}

fn block() -> impl Strategy<Value = Block> {
    (
        proptest::option::of(value()),
        proptest::option::of(value()),
        proptest::option::of(value()),
        proptest::option::of(0u64..100_000),
        proptest::collection::vec(value(), 0..4),
    )
        .prop_map(|(comment, event, id, retry, data)| Block {
            comment,
            event,
            id,
            retry,
            data,
        })
}

/// Serialises blocks with the given line ends (cycled), never letting a CR line end run into
/// the LF of a blank line (that would be one CRLF). Returns the bytes and the events the
/// algorithm must produce.
fn serialise(blocks: &[Block], ends: &[u8], space: &[bool]) -> (Vec<u8>, Vec<Event>) {
    let mut out = Vec::new();
    let mut expected = Vec::new();
    let mut i = 0usize;
    let mut last_id: Option<String> = None;
    let mut line = |out: &mut Vec<u8>, text: &[u8]| {
        let mut end = ends[i % ends.len()] % 3;
        i += 1;
        if text.is_empty() && out.last() == Some(&b'\r') && end == 0 {
            end = 1;
        }
        out.extend_from_slice(text);
        out.extend_from_slice([&b"\n"[..], b"\r", b"\r\n"][end as usize]);
    };
    let field = |name: &str, value: &str, n: usize| {
        // With a space after the colon, or without when the value allows it.
        let sep = if space[n % space.len()] || value.starts_with(' ') {
            ": "
        } else {
            ":"
        };
        format!("{name}{sep}{value}").into_bytes()
    };
    for (n, b) in blocks.iter().enumerate() {
        if let Some(c) = &b.comment {
            line(&mut out, format!(":{c}").as_bytes());
        }
        if let Some(e) = &b.event {
            line(&mut out, &field("event", e, n));
        }
        if let Some(id) = &b.id {
            line(&mut out, &field("id", id, n + 1));
            last_id = (!id.is_empty()).then(|| id.clone());
        }
        if let Some(r) = b.retry {
            line(&mut out, format!("retry: {r}").as_bytes());
        }
        for (k, d) in b.data.iter().enumerate() {
            line(&mut out, &field("data", d, n + k));
        }
        line(&mut out, b"");
        if !b.data.is_empty() {
            expected.push(Event {
                event: b.event.clone().filter(|e| !e.is_empty()),
                data: b.data.join("\n"),
                id: last_id.clone(),
                retry: b.retry,
            });
        }
    }
    (out, expected)
}

/// Splits `bytes` at the given points (taken modulo the length, in any order).
fn split<'a>(bytes: &'a [u8], points: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = points
        .iter()
        .map(|p| {
            if bytes.is_empty() {
                0
            } else {
                p % (bytes.len() + 1)
            }
        })
        .collect();
    cuts.sort_unstable();
    let mut chunks = Vec::new();
    let mut start = 0;
    for cut in cuts {
        chunks.push(&bytes[start..cut]); // empty chunks included, on purpose
        start = cut;
    }
    chunks.push(&bytes[start..]);
    chunks
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Generated event streams decode to the generated events, whatever the chunking.
    #[test]
    fn any_chunking_yields_the_serialised_events(
        blocks in proptest::collection::vec(block(), 0..8),
        ends in proptest::collection::vec(0u8..3, 1..16),
        space in proptest::collection::vec(any::<bool>(), 1..8),
        bom in any::<bool>(),
        points in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let (mut bytes, expected) = serialise(&blocks, &ends, &space);
        if bom {
            bytes.splice(0..0, *b"\xEF\xBB\xBF");
        }
        let whole = decode_whole(&bytes);
        prop_assert_eq!(&whole.events, &expected);
        prop_assert_eq!(whole.error, None);
        prop_assert_eq!(whole.end, Ok(()));
        prop_assert_eq!(&run_chunks(DEFAULT_MAX_SIZE, split(&bytes, &points)), &whole);
        prop_assert_eq!(&one_byte_at_a_time(&bytes), &whole);
    }

    /// Arbitrary bytes over the stream's alphabet, with a small size limit: chunking changes
    /// neither the events, nor the error, nor the end-of-stream verdict.
    #[test]
    fn any_chunking_of_any_bytes_is_invisible(
        bytes in proptest::collection::vec(
            proptest::sample::select(b"data: \r\n\r\n:idevntry09x\0\xEF\xBB\xBF\xE2\x82\xAC\x80".to_vec()),
            0..200,
        ),
        max_size in prop_oneof![Just(DEFAULT_MAX_SIZE), 0usize..40],
        points in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let whole = run_chunks(max_size, [&bytes[..]]);
        prop_assert_eq!(&run_chunks(max_size, split(&bytes, &points)), &whole);
        prop_assert_eq!(&run_chunks(max_size, bytes.chunks(1)), &whole);
    }
}

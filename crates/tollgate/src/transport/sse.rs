//! Server-sent events decoder: bytes from the network in, [`Event`]s out.
//!
//! The decoder follows the WHATWG HTML rules for interpreting an event stream (section 9.2.6):
//!
//! - the stream is UTF-8, decoded with U+FFFD for invalid sequences; one leading BOM is dropped;
//! - lines end in CRLF, LF or CR; a CR at the end of one chunk and an LF at the start of the next
//!   are one line end;
//! - a line starting with `:` is a comment; `name:value` is a field, with one leading space
//!   removed from the value; a line without `:` is a field with an empty value;
//! - `event` sets the event type, `data` appends the value and a newline to the data buffer, `id`
//!   sets the last event id (unless the value contains U+0000), `retry` sets the reconnection time
//!   (ASCII digits only); other fields are ignored;
//! - a blank line dispatches: with an empty data buffer nothing is emitted (the event type is
//!   reset), otherwise the trailing newline is removed and the event is emitted.
//!
//! Chunk boundaries never change the result: split anywhere (inside a UTF-8 sequence, inside a
//! CRLF, inside a field name), the events are the same as from the whole buffer at once.
//!
//! Unlike a browser's `EventSource`, which discards an unfinished event silently, the decoder tells
//! the caller whether the stream ended cleanly ([`Decoder::finish`]): a completion stream cut in
//! the middle of an event is a failed call, never a short success. Memory is bounded: a line or an
//! event larger than [`Decoder::max_size`] (16 MiB by default) is an error ([`TooLarge`]).
//!
//! ```
//! use tollgate::transport::sse::Decoder;
//!
//! let mut decoder = Decoder::new();
//! let mut events = Vec::new();
//! // Chunks arrive as the network delivers them; here one splits a CRLF.
//! decoder.push(b"data: {\"choices\":[]}\r", &mut events).expect("small stream");
//! decoder.push(b"\n\r\ndata: [DONE]\n\n", &mut events).expect("small stream");
//! assert_eq!(events.len(), 2);
//! assert_eq!(events[0].data, "{\"choices\":[]}");
//! assert!(events[1].is_done());
//! decoder.finish().expect("the stream ended between events");
//! ```

use std::fmt;

use memchr::{memchr, memchr2};

/// The default for [`Decoder::max_size`]: 16 MiB.
pub const DEFAULT_MAX_SIZE: usize = 16 * 1024 * 1024;

/// Buffers grown beyond this are released after use rather than kept for the next line or event.
const RETAIN: usize = 256 * 1024;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One dispatched server-sent event.
///
/// ```
/// use tollgate::transport::sse::Event;
///
/// let event = Event { data: "[DONE]".into(), ..Event::default() };
/// assert!(event.is_done());
/// assert_eq!(event.event_type(), "message");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Event {
    /// The event type from the last `event` field of the block; `None` when absent or empty,
    /// which means `"message"` (see [`Event::event_type`]).
    pub event: Option<String>,
    /// The `data` field values of the block, joined with `"\n"`.
    pub data: String,
    /// The last event id in effect when the event was dispatched. Ids persist across events
    /// until the stream sets another; `None` when no id was set or it was reset with an empty `id`.
    pub id: Option<String>,
    /// The reconnection time in milliseconds, if this event's block carried a valid `retry`
    /// field. The value in effect for the stream is [`Decoder::reconnection_time`].
    pub retry: Option<u64>,
}

impl Event {
    /// Whether this is OpenAI's end-of-stream marker, `data: [DONE]`.
    ///
    /// ```
    /// use tollgate::transport::sse::Event;
    /// assert!(!Event { data: "{}".into(), ..Event::default() }.is_done());
    /// ```
    pub fn is_done(&self) -> bool {
        self.data == "[DONE]"
    }

    /// The event type, `"message"` when the stream named none.
    ///
    /// ```
    /// use tollgate::transport::sse::Event;
    /// let event = Event { event: Some("ping".into()), ..Event::default() };
    /// assert_eq!(event.event_type(), "ping");
    /// ```
    pub fn event_type(&self) -> &str {
        self.event.as_deref().unwrap_or("message")
    }

    /// The event framed as the wire carries it (`event:`, `id:`, one `data:` line per line of
    /// the data, a blank line): what a proxy or an HTTP-client adapter passes on.
    ///
    /// ```
    /// use tollgate::transport::sse::Event;
    /// let event = Event { data: "{\"a\":1}".into(), ..Event::default() };
    /// assert_eq!(event.encode(), "data: {\"a\":1}\n\n");
    /// ```
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(self.data.len() + 16);
        if let Some(kind) = &self.event {
            out.push_str("event: ");
            out.push_str(kind);
            out.push('\n');
        }
        if let Some(id) = &self.id {
            out.push_str("id: ");
            out.push_str(id);
            out.push('\n');
        }
        for line in self.data.split('\n') {
            out.push_str("data: ");
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
        out
    }
}

/// A line or an event over the decoder's size limit ([`Decoder::max_size`]).
///
/// Returned by [`Decoder::push`]; the decoder stays failed afterwards (every later `push` returns
/// the same error and [`Decoder::finish`] reports the stream as truncated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TooLarge {
    /// One line (field or comment, without its line end) exceeded the limit.
    #[error(
        "server-sent event stream has a line longer than {limit} bytes; the upstream is not \
         sending an event stream, or raise the limit with Decoder::with_max_size"
    )]
    Line {
        /// The limit in bytes.
        limit: usize,
    },
    /// The data of one event (its `data` values joined with newlines) exceeded the limit.
    #[error(
        "server-sent event has more than {limit} bytes of data; the upstream is not sending a \
         blank line between events, or raise the limit with Decoder::with_max_size"
    )]
    Event {
        /// The limit in bytes.
        limit: usize,
    },
}

/// The stream ended in the middle of an event or a line: the response is incomplete.
///
/// Returned by [`Decoder::finish`]. A caller must treat it as a failed call, never as a short
/// success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub struct Truncated {
    /// Bytes of a last line that had no line end (0 when the stream ended on a line end).
    pub partial_line: usize,
    /// Whether an event had begun (a field line after the last blank line) without being
    /// dispatched; also set after [`Decoder::push`] failed with [`TooLarge`].
    pub pending_event: bool,
}

impl fmt::Display for Truncated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("server-sent event stream was cut off")?;
        match (self.partial_line, self.pending_event) {
            (0, _) => f.write_str(" inside an event (no blank line after its last field)")?,
            (n, false) => write!(f, " in the middle of a line ({n} bytes without a line end)")?,
            (n, true) => write!(
                f,
                " inside an event, in the middle of a line ({n} bytes without a line end)"
            )?,
        }
        f.write_str("; treat the response as failed, not complete")
    }
}

/// An incremental server-sent events decoder.
///
/// Feed it the response body chunk by chunk with [`push`](Decoder::push), then call
/// [`finish`](Decoder::finish) at the end of the body to learn whether the stream ended cleanly.
/// It copies only what it must keep across chunks (an unfinished line, the data of an unfinished
/// event) and allocates only for the events it emits.
///
/// ```
/// use tollgate::transport::sse::{Decoder, Truncated};
///
/// let mut decoder = Decoder::new();
/// let mut events = Vec::new();
/// decoder.push(b"id: 7\nevent: delta\ndata: hel", &mut events).expect("small stream");
/// decoder.push(b"lo\ndata: world\n\ndata: cut", &mut events).expect("small stream");
/// assert_eq!(events.len(), 1);
/// assert_eq!(events[0].event.as_deref(), Some("delta"));
/// assert_eq!(events[0].data, "hello\nworld");
/// assert_eq!(decoder.last_event_id(), Some("7"));
/// // The second event never got its blank line: the stream was cut.
/// assert_eq!(
///     decoder.finish(),
///     Err(Truncated { partial_line: 9, pending_event: false }),
/// );
/// ```
#[derive(Debug, Clone)]
pub struct Decoder {
    /// The start of a line whose end has not arrived yet (never empty while carried).
    line: Vec<u8>,
    /// The data buffer, raw: each `data` value followed by `\n`. Decoded once, at dispatch.
    data: Vec<u8>,
    /// The event type buffer, raw.
    event_type: Vec<u8>,
    /// The last event id buffer (empty = none).
    id: String,
    /// The last event id as of the last blank line.
    last_id: String,
    /// `id` changed since the last blank line.
    id_changed: bool,
    /// A valid `retry` seen since the last blank line.
    block_retry: Option<u64>,
    /// The reconnection time in effect.
    retry: Option<u64>,
    max_size: usize,
    /// The previous chunk ended with CR: an LF starting the next one belongs to that line end.
    skip_lf: bool,
    /// The first line has been interpreted (the BOM check is done).
    past_first_line: bool,
    /// A field line has been seen since the last blank line.
    in_event: bool,
    failed: Option<TooLarge>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder with the default size limit, [`DEFAULT_MAX_SIZE`].
    pub fn new() -> Self {
        Self::with_max_size(DEFAULT_MAX_SIZE)
    }

    /// A decoder that refuses lines and events larger than `max_size` bytes.
    ///
    /// A line is measured in bytes without its line end; an event by its data (the `data` values
    /// joined with newlines).
    ///
    /// ```
    /// use tollgate::transport::sse::{Decoder, TooLarge};
    ///
    /// let mut decoder = Decoder::with_max_size(8);
    /// let mut events = Vec::new();
    /// assert_eq!(
    ///     decoder.push(b"data: 0123456789\n", &mut events),
    ///     Err(TooLarge::Line { limit: 8 }),
    /// );
    /// assert!(decoder.finish().is_err());
    /// ```
    pub fn with_max_size(max_size: usize) -> Self {
        Self {
            line: Vec::new(),
            data: Vec::new(),
            event_type: Vec::new(),
            id: String::new(),
            last_id: String::new(),
            id_changed: false,
            block_retry: None,
            retry: None,
            max_size,
            skip_lf: false,
            past_first_line: false,
            in_event: false,
            failed: None,
        }
    }

    /// The size limit for one line and for the data of one event, in bytes.
    pub fn max_size(&self) -> usize {
        self.max_size
    }

    /// The last event id, as of the last blank line (what a reconnecting client sends as
    /// `Last-Event-ID`); `None` when the stream set none or reset it with an empty `id`.
    pub fn last_event_id(&self) -> Option<&str> {
        (!self.last_id.is_empty()).then_some(self.last_id.as_str())
    }

    /// The reconnection time in milliseconds from the latest valid `retry` field, if any.
    /// Unlike [`Event::retry`] this includes `retry` fields in blocks that carried no data.
    pub fn reconnection_time(&self) -> Option<u64> {
        self.retry
    }

    /// Decodes the next chunk of the stream and appends the events it completes to `out`.
    ///
    /// Chunks may be split anywhere. On [`TooLarge`] the events decoded before the offending line
    /// are in `out`, and the decoder is failed: later calls return the same error.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<Event>) -> Result<(), TooLarge> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        let result = self.push_chunk(chunk, out);
        if let Err(error) = result {
            self.failed = Some(error);
            // Nothing more will be decoded: release the buffers now.
            self.line = Vec::new();
            self.data = Vec::new();
        }
        result
    }

    /// Ends the stream: `Ok` when it ended between events, [`Truncated`] when it ended inside an
    /// event or a line (or after [`push`](Decoder::push) failed, then with `partial_line: 0` and
    /// `pending_event: true`). The unfinished event is dropped.
    pub fn finish(self) -> Result<(), Truncated> {
        if self.failed.is_some() {
            return Err(Truncated {
                partial_line: 0,
                pending_event: true,
            });
        }
        let mut partial: &[u8] = &self.line;
        if !self.past_first_line {
            partial = partial.strip_prefix(BOM).unwrap_or(partial);
        }
        let pending_event = self.in_event;
        if partial.is_empty() && !pending_event {
            Ok(())
        } else {
            Err(Truncated {
                partial_line: partial.len(),
                pending_event,
            })
        }
    }

    fn push_chunk(&mut self, mut chunk: &[u8], out: &mut Vec<Event>) -> Result<(), TooLarge> {
        if self.skip_lf {
            let Some(&first) = chunk.first() else {
                return Ok(());
            };
            self.skip_lf = false;
            if first == b'\n' {
                chunk = &chunk[1..];
            }
        }
        let mut start = 0;
        while let Some(offset) = memchr2(b'\n', b'\r', &chunk[start..]) {
            let end = start + offset;
            if self.line.is_empty() {
                self.interpret_line(&chunk[start..end], out)?;
            } else {
                let rest = &chunk[start..end];
                self.check_line(self.line.len() + rest.len())?;
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(rest);
                let result = self.interpret_line(&line, out);
                line.clear();
                if line.capacity() <= RETAIN {
                    self.line = line;
                }
                result?;
            }
            start = end + 1;
            if chunk[end] == b'\r' {
                match chunk.get(start) {
                    Some(b'\n') => start += 1,
                    Some(_) => {}
                    None => self.skip_lf = true,
                }
            }
        }
        let tail = &chunk[start..];
        if !tail.is_empty() {
            self.check_line(self.line.len() + tail.len())?;
            self.line.extend_from_slice(tail);
        }
        Ok(())
    }

    fn check_line(&self, len: usize) -> Result<(), TooLarge> {
        if len > self.max_size {
            Err(TooLarge::Line {
                limit: self.max_size,
            })
        } else {
            Ok(())
        }
    }

    /// Interprets one complete line (without its line end).
    fn interpret_line(&mut self, mut line: &[u8], out: &mut Vec<Event>) -> Result<(), TooLarge> {
        self.check_line(line.len())?;
        if !self.past_first_line {
            self.past_first_line = true;
            line = line.strip_prefix(BOM).unwrap_or(line);
        }
        let Some(&first) = line.first() else {
            self.dispatch(out);
            return Ok(());
        };
        if first == b':' {
            return Ok(());
        }
        self.in_event = true;
        let (name, value) = match memchr(b':', line) {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match name {
            b"data" => {
                if self.data.len() + value.len() > self.max_size {
                    return Err(TooLarge::Event {
                        limit: self.max_size,
                    });
                }
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
            }
            b"event" => {
                self.event_type.clear();
                self.event_type.extend_from_slice(value);
            }
            b"id" if memchr(0, value).is_none() => {
                self.id.clear();
                self.id.push_str(&String::from_utf8_lossy(value));
                self.id_changed = true;
            }
            b"retry" => {
                if let Some(ms) = parse_retry(value) {
                    self.retry = Some(ms);
                    self.block_retry = Some(ms);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A blank line.
    fn dispatch(&mut self, out: &mut Vec<Event>) {
        if self.id_changed {
            self.last_id.clone_from(&self.id);
            self.id_changed = false;
        }
        self.in_event = false;
        let retry = self.block_retry.take();
        let Some((_newline, data)) = self.data.split_last() else {
            self.event_type.clear();
            return;
        };
        out.push(Event {
            event: (!self.event_type.is_empty()).then(|| decode(&self.event_type)),
            data: decode(data),
            id: (!self.id.is_empty()).then(|| self.id.clone()),
            retry,
        });
        self.event_type.clear();
        self.data.clear();
        if self.data.capacity() > RETAIN {
            self.data = Vec::new();
        }
    }
}

/// UTF-8 with U+FFFD for invalid sequences; one validation pass and one copy when valid.
fn decode(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// A `retry` value: one or more ASCII digits, in range for `u64`; anything else is ignored.
fn parse_retry(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(chunks: &[&[u8]]) -> (Vec<Event>, Result<(), Truncated>) {
        let mut decoder = Decoder::new();
        let mut out = Vec::new();
        for chunk in chunks {
            decoder.push(chunk, &mut out).expect("within limits");
        }
        (out, decoder.finish())
    }

    #[test]
    fn retry_values() {
        assert_eq!(parse_retry(b"0"), Some(0));
        assert_eq!(parse_retry(b"03000"), Some(3000));
        assert_eq!(parse_retry(b""), None);
        assert_eq!(parse_retry(b"1 "), None);
        assert_eq!(parse_retry(b"-1"), None);
        assert_eq!(parse_retry(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_retry(b"18446744073709551616"), None);
    }

    #[test]
    fn empty_chunk_keeps_a_pending_cr() {
        let (events, end) = decode_all(&[b"data: a\r", b"", b"\n", b"\n"]);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data, "a");
        assert_eq!(end, Ok(()));
    }

    #[test]
    fn bom_split_over_chunks_and_only_a_bom() {
        let (events, end) = decode_all(&[b"\xEF", b"\xBB", b"\xBFdata: x\n\n"]);
        assert_eq!(events[0].data, "x");
        assert_eq!(end, Ok(()));
        assert_eq!(decode_all(&[b"\xEF\xBB\xBF"]).1, Ok(()));
        assert!(decode_all(&[b"\xEF\xBB"]).1.is_err());
    }

    #[test]
    fn large_buffers_are_released() {
        let mut decoder = Decoder::new();
        let mut out = Vec::new();
        let big = vec![b'x'; RETAIN * 2];
        decoder.push(b"data: ", &mut out).expect("ok");
        decoder.push(&big, &mut out).expect("ok");
        decoder.push(b"\n\n", &mut out).expect("ok");
        assert_eq!(out[0].data.len(), RETAIN * 2);
        assert!(decoder.line.capacity() <= RETAIN);
        assert!(decoder.data.capacity() <= RETAIN);
    }
}

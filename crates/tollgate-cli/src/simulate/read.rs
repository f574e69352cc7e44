//! Reading a trace: call rows and incidents, with each bad line named on stderr.

use std::io::BufRead;

use crate::trace::{Incident, Line, Row, known_fields, parse_line};

/// A trace read into rows and incidents.
pub(crate) struct Trace {
    /// Good call rows, in file order.
    pub rows: Vec<Row>,
    /// Incidents, in file order.
    pub incidents: Vec<Incident>,
    /// Bad lines skipped.
    pub bad: usize,
}

/// Why reading a trace stopped.
pub(crate) enum Stop {
    /// The file could not be read.
    Io(String),
    /// A bad line under `--strict` (already reported).
    Strict,
}

/// Reads a trace, reporting each bad line on stderr as `NAME:LINE: message`.
pub(crate) fn read_trace(name: &str, reader: impl BufRead, strict: bool) -> Result<Trace, Stop> {
    let mut rows = Vec::new();
    let mut incidents = Vec::new();
    let mut bad = 0;
    let mut unknown: Vec<String> = Vec::new();
    for (i, line) in reader.split(b'\n').enumerate() {
        let n = i + 1;
        let bytes = line.map_err(|e| Stop::Io(format!("cannot read {name}: {e}")))?;
        let parsed = match std::str::from_utf8(&bytes) {
            Err(e) => Some(Err(format!(
                "not valid UTF-8 (at byte {})",
                e.valid_up_to()
            ))),
            Ok(text) => {
                let text = text.trim();
                if text.is_empty() || text.starts_with('#') {
                    None
                } else {
                    let known = unknown.len();
                    let parsed = parse_line(n, text, &mut unknown);
                    for seen in &unknown[known..] {
                        let (field, fields) = known_fields(seen);
                        let place = match seen.split_once('.') {
                            Some((place, _)) => format!(" in \"{place}\""),
                            None => String::new(),
                        };
                        eprintln!(
                            "{name}:{n}: warning: unknown field \"{field}\"{place} is ignored \
                             (known fields: {})",
                            fields.join(", ")
                        );
                    }
                    Some(parsed)
                }
            }
        };
        match parsed {
            None => {}
            Some(Ok(Line::Call(row))) => rows.push(row),
            Some(Ok(Line::Incident(incident))) => incidents.push(incident),
            Some(Err(message)) => {
                bad += 1;
                if strict {
                    eprintln!("{name}:{n}: {message}");
                    return Err(Stop::Strict);
                }
                eprintln!("{name}:{n}: {message}; line skipped");
            }
        }
    }
    Ok(Trace {
        rows,
        incidents,
        bad,
    })
}

//! Trace files for `tollgate simulate`: one JSON object per line, each a call or an incident.

use std::time::Duration;

use serde_json::{Map, Value, json};
use tollgate::policy::Glob;
use tollgate::retry::Failure;
use tollgate::tokens::Usage;
use tollgate::{Call, Outcome, Prompt};

use crate::count::type_name;

/// Every field a call row may have; `note` is free text for people and is ignored.
pub(crate) const FIELDS: &[&str] = &[
    "at_ms",
    "tenant",
    "model",
    "upstream",
    "key",
    "route",
    "priority",
    "prompt",
    "prompt_tokens",
    "request",
    "max_tokens",
    "deadline_ms",
    "latency_ms",
    "usage",
    "status",
    "headers",
    "failure",
    "then",
    "note",
];

/// Every field of an outcome object in a row's `then` list.
pub(crate) const OUTCOME_FIELDS: &[&str] = &[
    "status",
    "headers",
    "usage",
    "latency_ms",
    "failure",
    "note",
];

/// Every field of an `{"incident": {...}}` line.
pub(crate) const INCIDENT_FIELDS: &[&str] = &[
    "upstream",
    "model",
    "from_ms",
    "to_ms",
    "status",
    "headers",
    "failure",
    "latency_ms",
    "note",
];

/// The short forms `failure` accepts besides the codes of [`Failure::TRANSPORT`]. They mean
/// what [`Failure::from_code`] reads them as: `connect` is a connection failure of no known kind
/// (`connect_other`), `reset`, `dns` and `tls` are `connect_reset`, `connect_dns` and
/// `connect_tls`, and `timeout` is the total timeout (`timeout_total`).
pub(crate) const FAILURE_SHORT_FORMS: [&str; 5] = ["connect", "reset", "dns", "tls", "timeout"];

/// Reads a `failure` (`at` is its place, such as `then[0].`): a transport failure's code, the
/// one the engine writes in attempt records (`connect_refused`, `timeout_first_byte`, ...), or
/// one of [`FAILURE_SHORT_FORMS`]. A status code is refused: that is what `status` is for.
pub(crate) fn parse_failure(name: &str, at: &str) -> Result<Failure, String> {
    match Failure::from_code(name) {
        Some(Failure::Status(s)) => Err(format!(
            "\"{at}failure\" \"{name}\" is an HTTP status, not a transport failure; write \
             \"{at}status\": {s} instead"
        )),
        Some(f) => Ok(f),
        None => Err(format!(
            "unknown \"{at}failure\" \"{name}\"; use one of {}, or the short forms {}",
            Failure::TRANSPORT.map(|f| f.code()).join(", "),
            FAILURE_SHORT_FORMS.join(", ")
        )),
    }
}

/// The prompt of a row, in whichever form the row gives it.
#[derive(Debug, Clone)]
pub(crate) enum RowPrompt {
    /// No prompt field: zero prompt tokens.
    None,
    /// `prompt_tokens`.
    Tokens(u64),
    /// `prompt`: text counted with the model's tokenizer.
    Text(String),
    /// `request`: an OpenAI chat request.
    Request(Value),
}

/// How one attempt ends, as a trace gives it (a row, an entry of its `then` list, or an
/// incident). Every field is optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct OutcomeSpec {
    /// HTTP status of the response.
    pub status: Option<u16>,
    /// Response headers, in the order given.
    pub headers: Vec<(String, String)>,
    /// Usage the response reported.
    pub usage: Option<Usage>,
    /// How long the attempt runs once admitted; `None`: the row's `latency_ms`.
    pub latency_ms: Option<u64>,
    /// A transport failure that ended the attempt.
    pub failure: Option<Failure>,
}

impl OutcomeSpec {
    /// A success with `usage` when known, else status 200 with the usage unknown (the reservation
    /// is kept): what later attempts get once a row's `then` list has run out.
    pub(crate) fn success(usage: Option<Usage>) -> OutcomeSpec {
        OutcomeSpec {
            status: Some(200),
            usage,
            ..OutcomeSpec::default()
        }
    }

    /// The headers in the form [`Outcome::with_headers`] takes.
    pub(crate) fn header_refs(&self) -> Vec<(&str, &[u8])> {
        self.headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes()))
            .collect()
    }

    /// The outcome the engine settles with: a transport failure; else the reported usage (status
    /// 200 unless given); else a status (>= 400 is not billed); else unknown, which keeps the
    /// whole reservation (as a call that timed out would). `headers` come from
    /// [`OutcomeSpec::header_refs`].
    pub(crate) fn outcome<'a>(
        &self,
        headers: &'a [(&'a str, &'a [u8])],
        latency: Duration,
    ) -> Outcome<'a> {
        let outcome = match (self.failure, self.usage, self.status) {
            (Some(f), usage, status) => Outcome {
                status,
                usage,
                ..Outcome::failed(f)
            },
            (None, Some(usage), status) => Outcome {
                status: Some(status.unwrap_or(200)),
                ..Outcome::ok(usage)
            },
            (None, None, Some(s)) => Outcome::status(s),
            (None, None, None) => Outcome::unknown(),
        };
        outcome.with_headers(headers).with_latency(latency)
    }

    /// Whether it says anything about how the attempt ends (beyond its latency).
    fn ends(&self) -> bool {
        self.status.is_some() || self.failure.is_some() || self.usage.is_some()
    }
}

/// One call of a trace.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    /// 1-based line in the trace file.
    pub line: usize,
    /// Arrival time in virtual milliseconds.
    pub at_ms: u64,
    pub tenant: String,
    pub model: String,
    pub upstream: String,
    pub key: String,
    pub route: String,
    pub priority: i16,
    pub prompt: RowPrompt,
    pub max_tokens: Option<u64>,
    /// Time the whole call (every attempt) may take.
    pub deadline_ms: Option<u64>,
    /// How long an attempt runs once admitted, unless its outcome says otherwise.
    pub latency_ms: u64,
    /// How the first attempt ends, then the following ones (`then`).
    pub outcomes: Vec<OutcomeSpec>,
}

impl Row {
    /// The call the engine sees (a first attempt; add [`Call::attempt`] for a retry).
    pub(crate) fn call(&self) -> Call<'_> {
        let prompt = match &self.prompt {
            RowPrompt::None => Prompt::Tokens(0),
            RowPrompt::Tokens(n) => Prompt::Tokens(*n),
            RowPrompt::Text(t) => Prompt::Text(t),
            RowPrompt::Request(r) => Prompt::Request(r),
        };
        let mut call = Call::new(&self.model)
            .tenant(&self.tenant)
            .upstream(&self.upstream)
            .key(&self.key)
            .route(&self.route)
            .priority(self.priority)
            .prompt(prompt);
        if let Some(m) = self.max_tokens {
            call = call.max_tokens(m);
        }
        if let Some(d) = self.deadline_ms {
            call = call.deadline(Duration::from_millis(d));
        }
        call
    }

    /// How attempt `n` (1 for the first) ends, incidents aside: the row's own outcome, then its
    /// `then` list; past its end, a success with the row's usage (else usage unknown).
    pub(crate) fn outcome_of(&self, n: u32) -> OutcomeSpec {
        let i = n.max(1) as usize - 1;
        match self.outcomes.get(i) {
            Some(o) => o.clone(),
            None => OutcomeSpec::success(self.outcomes.first().and_then(|o| o.usage)),
        }
    }

    /// The latency of an attempt that ends with `spec`.
    pub(crate) fn latency(&self, spec: &OutcomeSpec) -> Duration {
        Duration::from_millis(spec.latency_ms.unwrap_or(self.latency_ms))
    }
}

/// A window of time in which every attempt that lands on matching upstreams and models ends the
/// same way (`{"incident": {...}}`).
#[derive(Debug, Clone)]
pub(crate) struct Incident {
    /// 1-based line in the trace file.
    pub line: usize,
    /// Upstream pattern (default `*`). A call without a route matches by its own `upstream`.
    pub upstream: Glob,
    /// Model pattern (default `*`).
    pub model: Glob,
    /// Start, inclusive, in virtual milliseconds.
    pub from_ms: u64,
    /// End, exclusive.
    pub to_ms: u64,
    /// How attempts end. Without status or failure, only the latency changes.
    pub outcome: OutcomeSpec,
}

impl Incident {
    /// Whether an attempt admitted at `at_ns` (virtual nanoseconds) on `upstream`/`model` falls
    /// in the incident.
    pub(crate) fn covers(&self, upstream: &str, model: &str, at_ns: u64) -> bool {
        let ms = 1_000_000u64;
        (self.from_ms.saturating_mul(ms)..self.to_ms.saturating_mul(ms)).contains(&at_ns)
            && self.upstream.matches(upstream)
            && self.model.matches(model)
    }

    /// The outcome of an attempt that would otherwise end with `own`.
    pub(crate) fn apply(&self, own: &OutcomeSpec) -> OutcomeSpec {
        if self.outcome.ends() {
            OutcomeSpec {
                latency_ms: self.outcome.latency_ms.or(own.latency_ms),
                ..self.outcome.clone()
            }
        } else {
            OutcomeSpec {
                latency_ms: self.outcome.latency_ms,
                ..own.clone()
            }
        }
    }

    /// Upstream/model, window and effect: `openai/* 10000..40000 ms: status 503, latency 50 ms`.
    pub(crate) fn describe(&self) -> String {
        let o = &self.outcome;
        let mut effect: Vec<String> = vec![];
        if let Some(f) = o.failure {
            effect.push(f.code().into_owned());
        }
        if let Some(s) = o.status {
            effect.push(format!("status {s}"));
        }
        for (k, v) in &o.headers {
            effect.push(format!("{k}: {v}"));
        }
        if let Some(l) = o.latency_ms {
            effect.push(format!("latency {l} ms"));
        }
        format!(
            "{}/{} {}..{} ms: {}",
            self.upstream.as_str(),
            self.model.as_str(),
            self.from_ms,
            self.to_ms,
            effect.join(", ")
        )
    }
}

/// One good line of a trace.
#[derive(Debug, Clone)]
pub(crate) enum Line {
    Call(Row),
    Incident(Incident),
}

/// Parses one non-blank, non-comment line. `unknown` collects field names that are not known
/// (they are ignored, and reported once each by the caller; see [`known_fields`]): plain for
/// a call row, `then.NAME` inside a `then` entry, `incident.NAME` inside an incident.
pub(crate) fn parse_line(
    line: usize,
    text: &str,
    unknown: &mut Vec<String>,
) -> Result<Line, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(obj) = value else {
        return Err(format!(
            "a trace line must be a JSON object like {{\"at_ms\": 0, \"model\": \"gpt-4o\"}}, found {}",
            type_name(&value)
        ));
    };
    match obj.get("incident") {
        None => parse_row(line, &obj, unknown).map(Line::Call),
        Some(Value::Object(inc)) => {
            if let Some(other) = obj.keys().find(|k| *k != "incident" && *k != "note") {
                return Err(format!(
                    "an incident line holds only \"incident\" (and \"note\"), found \"{other}\""
                ));
            }
            parse_incident(line, inc, unknown).map(Line::Incident)
        }
        Some(other) => Err(format!(
            "\"incident\" must be an object like {{\"upstream\": \"openai\", \"from_ms\": 0, \
             \"to_ms\": 30000, \"status\": 503}}, found {}",
            type_name(other)
        )),
    }
}

/// The known fields for a name collected by [`parse_line`].
pub(crate) fn known_fields(name: &str) -> (&str, &'static [&'static str]) {
    if let Some(field) = name.strip_prefix("then.") {
        (field, OUTCOME_FIELDS)
    } else if let Some(field) = name.strip_prefix("incident.") {
        (field, INCIDENT_FIELDS)
    } else {
        (name, FIELDS)
    }
}

fn note_unknown(obj: &Map<String, Value>, known: &[&str], prefix: &str, out: &mut Vec<String>) {
    for k in obj.keys() {
        let name = format!("{prefix}{k}");
        if !known.contains(&k.as_str()) && !out.contains(&name) {
            out.push(name);
        }
    }
}

/// Parses a call row (compatibility entry point for one line known to be a call).
#[cfg(test)]
pub(crate) fn parse_call(
    line: usize,
    text: &str,
    unknown: &mut Vec<String>,
) -> Result<Row, String> {
    match parse_line(line, text, unknown)? {
        Line::Call(row) => Ok(row),
        Line::Incident(_) => Err("an incident, not a call".into()),
    }
}

fn parse_row(
    line: usize,
    obj: &Map<String, Value>,
    unknown: &mut Vec<String>,
) -> Result<Row, String> {
    note_unknown(obj, FIELDS, "", unknown);
    let at_ms = opt_u64(obj, "at_ms")?
        .ok_or("missing \"at_ms\" (arrival time in milliseconds, e.g. \"at_ms\": 1500)")?;
    let model = opt_str(obj, "model")?.ok_or("missing \"model\" (e.g. \"model\": \"gpt-4o\")")?;
    if model.is_empty() {
        return Err("\"model\" is empty; name the model the call asks for".into());
    }
    let priority = match opt_i64(obj, "priority")? {
        None => 0,
        Some(p) => i16::try_from(p).map_err(|_| {
            format!(
                "\"priority\" must be between {} and {}, found {p}",
                i16::MIN,
                i16::MAX
            )
        })?,
    };
    let given: Vec<&str> = ["prompt", "prompt_tokens", "request"]
        .into_iter()
        .filter(|k| present(obj, k))
        .collect();
    if given.len() > 1 {
        return Err(format!(
            "give only one of \"prompt\", \"prompt_tokens\" and \"request\", found {}",
            given.join(" and ")
        ));
    }
    let prompt = if let Some(t) = opt_str(obj, "prompt")? {
        RowPrompt::Text(t)
    } else if let Some(n) = opt_u64(obj, "prompt_tokens")? {
        RowPrompt::Tokens(n)
    } else {
        match obj.get("request") {
            None | Some(Value::Null) => RowPrompt::None,
            Some(r @ Value::Object(_)) => RowPrompt::Request(r.clone()),
            Some(other) => {
                return Err(format!(
                    "\"request\" must be a chat request object, found {}",
                    type_name(other)
                ));
            }
        }
    };
    let mut first = parse_outcome(obj, "")?;
    // The row's latency is the default of every attempt; keep it out of the first outcome.
    first.latency_ms = None;
    let mut outcomes = vec![first];
    match obj.get("then") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            for (i, entry) in list.iter().enumerate() {
                let Value::Object(o) = entry else {
                    return Err(format!(
                        "\"then\"[{i}] must be an outcome object like {{\"status\": 503}}, \
                         found {}",
                        type_name(entry)
                    ));
                };
                note_unknown(o, OUTCOME_FIELDS, "then.", unknown);
                outcomes.push(
                    parse_outcome(o, &format!("then[{i}]."))
                        .map_err(|e| format!("in \"then\"[{i}] (attempt {}): {e}", i + 2))?,
                );
            }
        }
        Some(other) => {
            return Err(format!(
                "\"then\" must be an array of outcome objects (attempts 2, 3, ...), found {}",
                type_name(other)
            ));
        }
    }
    Ok(Row {
        line,
        at_ms,
        tenant: opt_str(obj, "tenant")?.unwrap_or_default(),
        model,
        upstream: opt_str(obj, "upstream")?.unwrap_or_default(),
        key: opt_str(obj, "key")?.unwrap_or_default(),
        route: opt_str(obj, "route")?.unwrap_or_default(),
        priority,
        prompt,
        max_tokens: opt_u64(obj, "max_tokens")?,
        deadline_ms: opt_u64(obj, "deadline_ms")?,
        latency_ms: opt_u64(obj, "latency_ms")?.unwrap_or(0),
        outcomes,
    })
}

fn parse_incident(
    line: usize,
    obj: &Map<String, Value>,
    unknown: &mut Vec<String>,
) -> Result<Incident, String> {
    note_unknown(obj, INCIDENT_FIELDS, "incident.", unknown);
    let glob = |key: &str| -> Result<Glob, String> {
        Ok(Glob::new(
            opt_str(obj, key)
                .map_err(|e| format!("in the incident: {e}"))?
                .as_deref()
                .unwrap_or("*"),
        ))
    };
    let upstream = glob("upstream")?;
    let model = glob("model")?;
    let window = |key: &str| -> Result<u64, String> {
        opt_u64(obj, key)
            .map_err(|e| format!("in the incident: {e}"))?
            .ok_or_else(|| {
                format!(
                    "the incident lacks \"{key}\" (its window is from_ms inclusive to to_ms \
                     exclusive, in virtual milliseconds)"
                )
            })
    };
    let from_ms = window("from_ms")?;
    let to_ms = window("to_ms")?;
    if to_ms <= from_ms {
        return Err(format!(
            "the incident's \"to_ms\" ({to_ms}) must be after its \"from_ms\" ({from_ms})"
        ));
    }
    if present(obj, "usage") {
        return Err("an incident takes no \"usage\"; give status, failure or latency_ms".into());
    }
    let outcome = parse_outcome(obj, "").map_err(|e| format!("in the incident: {e}"))?;
    if outcome.status.is_none() && outcome.failure.is_none() && outcome.latency_ms.is_none() {
        return Err(
            "the incident says nothing happens: give \"status\", \"failure\" or \"latency_ms\""
                .into(),
        );
    }
    if outcome.status.is_none() && outcome.failure.is_none() && !outcome.headers.is_empty() {
        return Err("the incident's \"headers\" need a \"status\" (or a \"failure\")".into());
    }
    Ok(Incident {
        line,
        upstream,
        model,
        from_ms,
        to_ms,
        outcome,
    })
}

/// The outcome fields of an object (`status`, `headers`, `usage`, `latency_ms`, `failure`).
fn parse_outcome(obj: &Map<String, Value>, at: &str) -> Result<OutcomeSpec, String> {
    let usage = match obj.get("usage") {
        None | Some(Value::Null) => None,
        Some(u) => Usage::from_response(&json!({ "usage": u }))
            .map_err(|e| format!("bad \"{at}usage\": {e}"))?,
    };
    let status = match opt_u64(obj, "status")? {
        None => None,
        Some(s @ 100..=599) => Some(s as u16),
        Some(s) => {
            return Err(format!(
                "\"{at}status\" must be an HTTP status 100..=599, found {s}"
            ));
        }
    };
    let headers = match obj.get("headers") {
        None | Some(Value::Null) => vec![],
        Some(Value::Object(h)) => h
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                Value::Number(n) => Ok((k.clone(), n.to_string())),
                other => Err(format!(
                    "header \"{k}\" must have a string value (as it comes over HTTP), found {}",
                    type_name(other)
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(format!(
                "\"{at}headers\" must be an object of header names to values, found {}",
                type_name(other)
            ));
        }
    };
    let failure = match opt_str(obj, "failure")? {
        None => None,
        Some(name) => Some(parse_failure(&name, at)?),
    };
    Ok(OutcomeSpec {
        status,
        headers,
        usage,
        latency_ms: opt_u64(obj, "latency_ms")?,
        failure,
    })
}

fn present(obj: &Map<String, Value>, key: &str) -> bool {
    obj.get(key).is_some_and(|v| !v.is_null())
}

fn opt_str(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!(
            "\"{key}\" must be a string, found {}",
            type_name(other)
        )),
    }
}

fn opt_u64(obj: &Map<String, Value>, key: &str) -> Result<Option<u64>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            format!(
                "\"{key}\" must be a non-negative integer, found {}",
                show(v)
            )
        }),
    }
}

fn opt_i64(obj: &Map<String, Value>, key: &str) -> Result<Option<i64>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| format!("\"{key}\" must be an integer, found {}", show(v))),
    }
}

/// A short rendering of a JSON value for messages.
fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate::retry::{ConnectKind, TimeoutKind};

    fn parse(text: &str) -> Result<Row, String> {
        parse_call(1, text, &mut Vec::new())
    }

    fn outcome(spec: &OutcomeSpec) -> Outcome<'static> {
        spec.outcome(&[], Duration::ZERO)
    }

    #[test]
    fn minimal_row() {
        let r = parse(r#"{"at_ms": 5, "model": "gpt-4o"}"#).unwrap();
        assert_eq!((r.at_ms, r.model.as_str(), r.latency_ms), (5, "gpt-4o", 0));
        assert!(matches!(r.prompt, RowPrompt::None));
        assert_eq!(
            outcome(&r.outcome_of(1)),
            Outcome::unknown().with_latency(Duration::ZERO)
        );
    }

    #[test]
    fn errors_name_the_field() {
        assert!(parse(r#"{"model": "m"}"#).unwrap_err().contains("at_ms"));
        assert!(parse(r#"{"at_ms": 1}"#).unwrap_err().contains("model"));
        assert!(
            parse(r#"{"at_ms": -1, "model": "m"}"#)
                .unwrap_err()
                .contains("non-negative")
        );
        assert!(
            parse(r#"{"at_ms": 1, "model": 3}"#)
                .unwrap_err()
                .contains("string")
        );
        assert!(parse(r#"{"at_ms": 1, "model": "m", "priority": 40000}"#).is_err());
        assert!(parse(r#"{"at_ms": 1, "model": "m", "status": 42}"#).is_err());
        assert!(parse(r#"{"at_ms": 1, "model": "m", "prompt": "a", "prompt_tokens": 3}"#).is_err());
        assert!(parse("[1]").unwrap_err().contains("object"));
        let e = parse(r#"{"at_ms": 1, "model": "m", "failure": "boom"}"#).unwrap_err();
        assert!(
            e.contains("\"boom\"") && e.contains("timeout_first_byte"),
            "{e}"
        );
        let e = parse(r#"{"at_ms": 1, "model": "m", "then": [{"failure": "nope"}]}"#).unwrap_err();
        assert!(e.contains("then") && e.contains("attempt 2"), "{e}");
        assert!(parse(r#"{"at_ms": 1, "model": "m", "headers": {"a": [1]}}"#).is_err());
    }

    #[test]
    fn unknown_fields_are_collected() {
        let mut unknown = Vec::new();
        parse_line(
            1,
            r#"{"at_ms": 1, "model": "m", "promt": "x", "then": [{"stauts": 1}]}"#,
            &mut unknown,
        )
        .unwrap();
        assert_eq!(unknown, vec!["promt".to_owned(), "then.stauts".to_owned()]);
        assert_eq!(known_fields("then.stauts").0, "stauts");
    }

    #[test]
    fn failed_status_is_not_billed() {
        let r = parse(r#"{"at_ms": 1, "model": "m", "status": 429}"#).unwrap();
        assert_eq!(outcome(&r.outcome_of(1)).status, Some(429));
        assert!(outcome(&r.outcome_of(1)).usage.is_none());
    }

    #[test]
    fn then_list_and_what_follows_it() {
        let r = parse(
            r#"{"at_ms": 1, "model": "m", "latency_ms": 7, "status": 503,
                "headers": {"retry-after": "2"},
                "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
                "then": [{"failure": "timeout_first_byte", "latency_ms": 30}]}"#,
        )
        .unwrap();
        let first = r.outcome_of(1);
        assert_eq!(first.headers, vec![("retry-after".into(), "2".into())]);
        assert_eq!(r.latency(&first), Duration::from_millis(7));
        let second = r.outcome_of(2);
        assert_eq!(
            outcome(&second).failure,
            Some(Failure::Timeout(TimeoutKind::FirstByte))
        );
        assert_eq!(r.latency(&second), Duration::from_millis(30));
        let third = outcome(&r.outcome_of(3));
        assert_eq!(third.status, Some(200));
        assert_eq!(third.usage.map(|u| u.completion_tokens), Some(4));
    }

    #[test]
    fn incidents_parse_and_match() {
        let mut unknown = Vec::new();
        let line = r#"{"incident": {"upstream": "openai", "from_ms": 10, "to_ms": 20, "status": 503, "latency_ms": 50}}"#;
        let Ok(Line::Incident(i)) = parse_line(3, line, &mut unknown) else {
            panic!("an incident");
        };
        let ms = 1_000_000;
        assert!(i.covers("openai", "gpt-4o", 10 * ms));
        assert!(i.covers("openai", "gpt-4o", 20 * ms - 1));
        assert!(!i.covers("openai", "gpt-4o", 20 * ms), "to_ms is exclusive");
        assert!(!i.covers("deepseek", "gpt-4o", 15 * ms));
        let own = OutcomeSpec::success(None);
        let hit = i.apply(&own);
        assert_eq!((hit.status, hit.latency_ms), (Some(503), Some(50)));
        for bad in [
            r#"{"incident": {"from_ms": 5, "to_ms": 5, "status": 503}}"#,
            r#"{"incident": {"from_ms": 5, "to_ms": 9}}"#,
            r#"{"incident": {"to_ms": 9, "status": 500}}"#,
            r#"{"incident": 3}"#,
            r#"{"incident": {"from_ms": 0, "to_ms": 9, "status": 500}, "at_ms": 3}"#,
        ] {
            assert!(parse_line(1, bad, &mut unknown).is_err(), "{bad}");
        }
    }

    #[test]
    fn failure_takes_the_engine_codes_and_their_short_forms() {
        for f in Failure::TRANSPORT {
            assert_eq!(parse_failure(&f.code(), ""), Ok(f), "{f:?}");
        }
        // The short forms mean what Failure::from_code says: "connect" is a connection failure
        // of no known kind (before the shared vocabulary the CLI read it as a refused one).
        for (short, f) in [
            ("connect", Failure::Connect(ConnectKind::Other)),
            ("reset", Failure::Connect(ConnectKind::Reset)),
            ("dns", Failure::Connect(ConnectKind::Dns)),
            ("tls", Failure::Connect(ConnectKind::Tls)),
            ("timeout", Failure::Timeout(TimeoutKind::Total)),
        ] {
            assert!(FAILURE_SHORT_FORMS.contains(&short), "{short}");
            assert_eq!(parse_failure(short, ""), Ok(f), "{short}");
        }
        let e = parse_failure("status_503", "then[0].").unwrap_err();
        assert!(e.contains("write \"then[0].status\": 503 instead"), "{e}");
        let e = parse_failure("Reset", "").unwrap_err();
        assert!(
            e.contains("\"Reset\"")
                && e.contains("connect_refused")
                && e.contains("timeout_total")
                && e.contains("the short forms connect, reset, dns, tls, timeout"),
            "{e}"
        );
    }

    #[test]
    fn an_incident_names_its_failure_by_its_code() {
        let line = r#"{"incident": {"upstream": "openai", "from_ms": 10, "to_ms": 20, "failure": "reset"}}"#;
        let Ok(Line::Incident(i)) = parse_line(1, line, &mut Vec::new()) else {
            panic!("an incident");
        };
        assert_eq!(i.describe(), "openai/* 10..20 ms: connect_reset");
    }
}

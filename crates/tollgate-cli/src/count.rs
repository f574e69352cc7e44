//! `tollgate count`: token counts of a text, a chat request, or a file of texts, with the cost
//! of those tokens as input; or a long text split into chunks of at most N tokens.

use std::collections::BTreeSet;
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::Path;

use serde_json::{Value, json};
use tollgate::Policy;
use tollgate::tokens::{self, ModelTable, Price};

use crate::check::{missing_file, report_errors};
use crate::fmt::{money, rate};
use crate::{CountArgs, exit};

/// Runs `tollgate count`.
pub(crate) fn run(args: &CountArgs) -> u8 {
    match try_run(args) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            exit::FAILED
        }
    }
}

fn try_run(args: &CountArgs) -> Result<u8, String> {
    let owned;
    let table: &ModelTable = match &args.policy {
        Some(path) => {
            owned = table_from_policy(path)?;
            &owned
        }
        None => ModelTable::bundled(),
    };
    let source = args.file.as_deref().filter(|p| *p != Path::new("-"));
    if args.jsonl {
        let model = args.model.as_deref();
        return count_lines(table, model, source, args.json);
    }
    if let Some(max_tokens) = args.split {
        let model = args.model.as_deref().ok_or_else(no_model)?;
        let text = read_text(source)?;
        return split_text(table, model, &text, max_tokens, args.overlap);
    }
    if args.chat {
        let text = read_text(source)?;
        count_chat(table, args.model.as_deref(), &text, args.json)
    } else {
        let model = args.model.as_deref().ok_or_else(no_model)?;
        let text = read_text(source)?;
        count_text(table, model, &text, args.json)
    }
}

fn no_model() -> String {
    "no model given; pass --model, e.g. `tollgate count --model gpt-4o FILE`".to_owned()
}

/// A model table with a policy's `[prices]` and `[models]` over the bundled one.
fn table_from_policy(path: &Path) -> Result<ModelTable, String> {
    if let Some(message) = missing_file(path) {
        return Err(message);
    }
    let policy = Policy::from_file(path).map_err(|errors| {
        report_errors(path, &errors);
        format!(
            "{} is not a valid policy; `tollgate check {}` explains",
            path.display(),
            path.display()
        )
    })?;
    Ok(ModelTable::with_overrides(
        policy.prices.iter().map(|(m, p)| (m.as_str(), *p)),
        policy
            .models
            .iter()
            .map(|(m, o)| (m.as_str(), o.encoding, o.context_window)),
    ))
}

/// Reads a whole file (or stdin when `None`) as UTF-8.
fn read_text(source: Option<&Path>) -> Result<String, String> {
    let mut bytes = Vec::new();
    let name = match source {
        Some(path) => {
            let mut f = std::fs::File::open(path)
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            f.read_to_end(&mut bytes)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            path.display().to_string()
        }
        None => {
            if std::io::stdin().is_terminal() {
                eprintln!("reading the text from stdin; end it with Ctrl-D (or give a FILE)");
            }
            std::io::stdin()
                .lock()
                .read_to_end(&mut bytes)
                .map_err(|e| format!("cannot read stdin: {e}"))?;
            "stdin".to_owned()
        }
    };
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "{name} is not valid UTF-8 (at byte {}); token counts need text",
            e.utf8_error().valid_up_to()
        )
    })
}

/// How a count was obtained, for people: `exact, o200k_base` or `estimated`.
fn how(exact: bool, encoding: Option<tokens::Encoding>) -> String {
    match (exact, encoding) {
        (true, Some(e)) => format!("exact, {e}"),
        (true, None) => "exact".to_owned(),
        (false, _) => "estimated".to_owned(),
    }
}

/// Says on stderr (once per model) when a model is not in the table, and whether its count is
/// still exact (OpenAI names map to a tokenizer by their prefix). Returns whether it is known.
fn notice_unknown(
    table: &ModelTable,
    model: &str,
    exact: bool,
    told: &mut BTreeSet<String>,
) -> bool {
    let known = table.lookup(model).is_some();
    if !known && told.insert(model.to_owned()) {
        match table.encoding(model) {
            Some(e) if exact => eprintln!(
                "model '{model}' is not in the table; counted exactly with {e} (by its name), \
                 price unknown"
            ),
            _ => eprintln!("model '{model}' is not in the table; estimated count, not exact"),
        }
    }
    known
}

fn price_of(table: &ModelTable, model: &str) -> Option<Price> {
    table.lookup(model).and_then(|info| info.price)
}

fn count_text(table: &ModelTable, model: &str, text: &str, as_json: bool) -> Result<u8, String> {
    let count = tokens::count_text(table, model, text);
    let known = notice_unknown(table, model, count.exact, &mut BTreeSet::new());
    let price = price_of(table, model);
    let cost = price.map(|p| tokens::estimate_cost(&p, count.tokens, 0));
    if as_json {
        let out = json!({
            "model": model,
            "known_model": known,
            "tokens": count.tokens,
            "exact": count.exact,
            "encoding": count.encoding.map(|e| e.as_str()),
            "input_cost": cost,
            "price_per_1m": price.map(price_json),
        });
        println!("{out}");
        return Ok(exit::OK);
    }
    println!(
        "{} tokens ({})",
        count.tokens,
        how(count.exact, count.encoding)
    );
    if known && !count.exact {
        eprintln!(
            "note: '{model}' has no bundled tokenizer; the count is an estimate that errs high"
        );
    }
    if let (Some(p), Some(c)) = (price, cost) {
        println!("input cost: ${} at ${} / 1M", money(c), rate(p.input));
    }
    Ok(exit::OK)
}

/// One line of `--split` output, its fields in this order.
#[derive(serde::Serialize)]
struct ChunkLine<'t> {
    text: &'t str,
    tokens: usize,
    exact: bool,
    start: usize,
    end: usize,
    overlap: usize,
}

/// `--split N`: one JSON line per chunk.
fn split_text(
    table: &ModelTable,
    model: &str,
    text: &str,
    max_tokens: usize,
    overlap: usize,
) -> Result<u8, String> {
    let chunks = tokens::split(table, model, text, max_tokens, overlap).map_err(|e| match e {
        tokens::SplitError::ZeroMax => {
            "--split 0: a chunk must be allowed at least 1 token".to_owned()
        }
        tokens::SplitError::OverlapTooLarge { .. } => format!(
            "--overlap {overlap} must be smaller than --split {max_tokens}; each chunk needs \
             room for new text"
        ),
        tokens::SplitError::ExceedsContextWindow { context_window, .. } => format!(
            "--split {max_tokens} exceeds the context window of '{model}' ({context_window} \
             tokens); use at most {context_window}, less your instructions and the reply"
        ),
        other => format!("cannot split: {other}"),
    })?;
    if let Some(first) = chunks.first() {
        notice_unknown(table, model, first.exact, &mut BTreeSet::new());
        if !first.exact && table.lookup(model).is_some() {
            eprintln!(
                "note: '{model}' has no bundled tokenizer; chunks are sized by an estimate that \
                 errs high"
            );
        }
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for c in &chunks {
        let line = ChunkLine {
            text: c.text,
            tokens: c.tokens,
            exact: c.exact,
            start: c.start,
            end: c.end,
            overlap: c.overlap,
        };
        let line = serde_json::to_string(&line).map_err(|e| format!("cannot encode: {e}"))?;
        writeln!(out, "{line}").map_err(|e| format!("cannot write output: {e}"))?;
    }
    out.flush()
        .map_err(|e| format!("cannot write output: {e}"))?;
    Ok(exit::OK)
}

fn price_json(p: Price) -> Value {
    json!({ "input": p.input, "cached_input": p.cached_input, "output": p.output })
}

fn count_chat(
    table: &ModelTable,
    model: Option<&str>,
    text: &str,
    as_json: bool,
) -> Result<u8, String> {
    let request: Value = serde_json::from_str(text).map_err(|e| {
        format!("--chat expects an OpenAI chat-completions request as JSON; it does not parse: {e}")
    })?;
    let model = match model {
        Some(m) => m.to_owned(),
        None => request
            .get("model")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("{}; the request has no \"model\" either", no_model()))?,
    };
    let estimate = tokens::count_chat(table, &model, &request)
        .map_err(|e| format!("cannot count this request: {e}"))?;
    let known = notice_unknown(table, &model, estimate.exact, &mut BTreeSet::new());
    let encoding = table.encoding(&model);
    let price = price_of(table, &model);
    let input_cost = price.map(|p| tokens::estimate_cost(&p, estimate.prompt_tokens, 0));
    let output_cost = match (price, estimate.completion_allowance) {
        (Some(p), Some(c)) => Some(tokens::estimate_cost(&p, 0, c)),
        _ => None,
    };
    if as_json {
        let out = json!({
            "model": model,
            "known_model": known,
            "prompt_tokens": estimate.prompt_tokens,
            "completion_allowance": estimate.completion_allowance,
            "exact": estimate.exact,
            "encoding": if estimate.exact { encoding.map(|e| e.as_str()) } else { None },
            "input_cost": input_cost,
            "max_output_cost": output_cost,
            "price_per_1m": price.map(price_json),
        });
        println!("{out}");
        return Ok(exit::OK);
    }
    println!(
        "prompt: {} tokens ({}), message overhead included",
        estimate.prompt_tokens,
        how(estimate.exact, encoding)
    );
    match estimate.completion_allowance {
        Some(c) => println!("completion allowance: {c} tokens"),
        None => println!(
            "completion allowance: none set (no max_tokens / max_completion_tokens); a policy \
             reserves defaults.max_completion_tokens"
        ),
    }
    if let (Some(p), Some(c)) = (price, input_cost) {
        println!("input cost: ${} at ${} / 1M", money(c), rate(p.input));
    }
    if let (Some(p), Some(c)) = (price, output_cost) {
        println!(
            "output cost at most: ${} at ${} / 1M",
            money(c),
            rate(p.output)
        );
    }
    Ok(exit::OK)
}

/// One text of a `--jsonl` line: a JSON string, or `{"text": ..., "model": ...}`.
fn parse_line(line: &str) -> Result<(String, Option<String>), String> {
    let value: Value =
        serde_json::from_str(line).map_err(|e| format!("not JSON ({e}); write a JSON string"))?;
    match value {
        Value::String(s) => Ok((s, None)),
        Value::Object(mut o) => {
            let text = match o.remove("text") {
                Some(Value::String(s)) => s,
                Some(other) => {
                    return Err(format!(
                        "\"text\" must be a string, found {}",
                        type_name(&other)
                    ));
                }
                None => return Err("the object has no \"text\"; write {\"text\": \"...\"}".into()),
            };
            let model = match o.remove("model") {
                None | Some(Value::Null) => None,
                Some(Value::String(m)) => Some(m),
                Some(other) => {
                    return Err(format!(
                        "\"model\" must be a string, found {}",
                        type_name(&other)
                    ));
                }
            };
            Ok((text, model))
        }
        other => Err(format!(
            "expected a JSON string or {{\"text\": \"...\"}}, found {}",
            type_name(&other)
        )),
    }
}

/// The JSON type name of a value, for messages.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn count_lines(
    table: &ModelTable,
    model: Option<&str>,
    source: Option<&Path>,
    as_json: bool,
) -> Result<u8, String> {
    let (name, reader): (String, Box<dyn BufRead>) = match source {
        Some(path) => {
            let f = std::fs::File::open(path)
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            (
                path.display().to_string(),
                Box::new(std::io::BufReader::new(f)),
            )
        }
        None => ("stdin".to_owned(), Box::new(std::io::stdin().lock())),
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut told = BTreeSet::new();
    let mut bad = 0usize;
    for (i, line) in reader.split(b'\n').enumerate() {
        let n = i + 1;
        let bytes = line.map_err(|e| format!("cannot read {name}: {e}"))?;
        let result = match std::str::from_utf8(&bytes) {
            Err(e) => Err(format!("not valid UTF-8 (at byte {})", e.valid_up_to())),
            Ok(line) => {
                let line = line.strip_suffix('\r').unwrap_or(line);
                if line.trim().is_empty() {
                    Err("empty line; write \"\" for an empty text".to_owned())
                } else {
                    parse_line(line)
                }
            }
        }
        .and_then(|(text, line_model)| {
            let m = line_model.as_deref().or(model).ok_or_else(|| {
                "no model: pass --model or give {\"text\": ..., \"model\": ...}".to_owned()
            })?;
            let count = tokens::count_text(table, m, &text);
            notice_unknown(table, m, count.exact, &mut told);
            Ok(count)
        });
        let written = match result {
            Ok(c) if as_json => {
                let line = json!({"line": n, "tokens": c.tokens, "exact": c.exact});
                writeln!(out, "{line}")
            }
            Ok(c) => writeln!(out, "{}", c.tokens),
            Err(message) => {
                bad += 1;
                // Keep stdout and stderr in step for people watching both.
                let _ = out.flush();
                eprintln!("{name}:{n}: {message}");
                if as_json {
                    writeln!(out, "{}", json!({"line": n, "error": message}))
                } else {
                    writeln!(out, "error")
                }
            }
        };
        written.map_err(|e| format!("cannot write output: {e}"))?;
    }
    out.flush()
        .map_err(|e| format!("cannot write output: {e}"))?;
    if bad > 0 {
        eprintln!(
            "{name}: {} could not be counted (marked `error` on stdout)",
            crate::check::plural(bad, "line")
        );
        return Ok(exit::PARTIAL);
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        assert_eq!(parse_line("\"hi\"").unwrap(), ("hi".to_owned(), None));
        assert_eq!(
            parse_line(r#"{"text":"hi","model":"gpt-4o"}"#).unwrap(),
            ("hi".to_owned(), Some("gpt-4o".to_owned()))
        );
        assert!(parse_line("42").unwrap_err().contains("found a number"));
        assert!(
            parse_line("{\"txt\":1}")
                .unwrap_err()
                .contains("no \"text\"")
        );
        assert!(parse_line("nope").unwrap_err().contains("not JSON"));
    }
}

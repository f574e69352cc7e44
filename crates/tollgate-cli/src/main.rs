//! `tollgate`: the command-line tool of the tollgate policy engine.
//!
//! Subcommands: `check` (validate a policy), `count` (token counts and input cost), `simulate`
//! (replay a trace of calls through the real engine in virtual time), `demo` (real calls against
//! fault-injecting test upstreams), `bench` (the call API against bare hyper), `serve` (an
//! OpenAI-compatible sidecar proxy with virtual keys) and `upstream` (the test upstream as a
//! process of its own) and `batch` (an OpenAI Batch API file through the engine, with a
//! journal that makes it resumable). Each subcommand lives in its own module;
//! this file holds the argument grammar and maps every result to an exit status.

mod batch;
mod bench;
mod check;
mod count;
mod demo;
mod fmt;
mod serve;
mod simulate;
mod trace;
mod upstream;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Exit statuses, shared by every subcommand (documented in `--help`).
pub(crate) mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// The command could not do its job: unreadable file, invalid policy, invalid input.
    pub const FAILED: u8 = 1;
    /// The command ran to the end but skipped some bad input lines (or `--strict` stopped at
    /// one); clap also uses 2 for a malformed command line.
    pub const PARTIAL: u8 = 2;
    /// `batch` was stopped (SIGTERM, Ctrl-C) before every line was answered: run it again.
    pub const INTERRUPTED: u8 = crate::batch::INTERRUPTED;
}

/// The runtime a command runs on: `threads` workers named `name`, SIGPIPE blocked
/// ([`tollgate::transport::runtime`]); `None` after saying on stderr why it could not start.
pub(crate) fn runtime(name: &str, threads: usize) -> Option<tokio::runtime::Runtime> {
    match tollgate::transport::runtime(name, threads) {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            None
        }
    }
}

const EXIT_CODES: &str = "\
Exit status:
  0  success
  1  the command could not do its job (unreadable file, invalid policy, invalid input)
  2  some input lines were bad and were skipped (or --strict stopped at one), or the command
     line itself is malformed; for batch: some lines were bad or their calls failed (see the
     output)
  3  batch only: stopped by SIGTERM or Ctrl-C before every line was answered; run the same
     command again to resume";

/// Client-side policy engine for LLM API calls: budgets, token accounting, cache and retry
/// decisions.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version, about, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a policy file and summarise what it enforces.
    ///
    /// Every problem is listed at once, one per line as FILE:LINE:COLUMN: FIELD: WHAT TO DO, on
    /// stderr. A valid policy prints its summary on stdout.
    #[command(after_help = EXIT_CODES)]
    Check(CheckArgs),
    /// Count the tokens of a text (or a chat request) for a model, with the input cost; or
    /// split a long text into chunks of at most N tokens (--split N).
    ///
    /// The text is counted exactly as given, byte for byte: a trailing newline (as `echo` adds)
    /// is part of it; use `printf` to leave it out. Models with a bundled tokenizer (o200k_base,
    /// cl100k_base) are counted exactly; others are estimated, erring high.
    #[command(after_help = EXIT_CODES)]
    Count(CountArgs),
    /// Replay a trace of calls through the real engine, in virtual time.
    #[command(long_about = simulate::LONG_ABOUT, after_help = EXIT_CODES)]
    Simulate(SimulateArgs),
    /// Real calls through the engine with examples/policy.toml, against test upstreams.
    ///
    /// Needs no arguments, no network and no keys: each upstream of the example policy is
    /// redirected to a fault-injecting test upstream on 127.0.0.1 (latency 20-200 ms, 5% 429
    /// with Retry-After, 2% 503, 1% cut streams). Eight tenants send calls, half streamed; the
    /// run shows a progress bar, ends with a table per tenant, and checks every request-rate
    /// budget against what the upstreams received: exit status 1 if any was exceeded.
    #[command(after_help = EXIT_CODES)]
    Demo(DemoArgs),
    /// Load benchmark: Engine::send (or stream) against a bare hyper-util client, same upstream.
    ///
    /// N requests at concurrency C, against the built-in test upstream on 127.0.0.1 or any
    /// OpenAI-compatible URL; prints both sides, the throughput ratio and the added median
    /// latency (and time to first token with --stream).
    #[command(after_help = EXIT_CODES)]
    Bench(BenchArgs),
    /// An OpenAI-compatible sidecar proxy: point OPENAI_BASE_URL at it.
    ///
    /// Serves POST /v1/chat/completions (JSON and SSE), GET /v1/models, GET /healthz, GET
    /// /metrics and POST /admin/reload with the engine of the policy file, whose [serve] section
    /// maps virtual keys (by SHA-256) to tenants. SIGHUP reloads the policy file; SIGTERM or
    /// Ctrl-C stops accepting and lets calls in flight finish (serve.shutdown_grace). Prints
    /// "listening on http://ADDR/v1" once it accepts connections.
    #[command(after_help = EXIT_CODES)]
    Serve(ServeArgs),
    /// Send an OpenAI Batch API file (JSONL) through the engine, durably and resumably.
    #[command(long_about = batch::LONG_ABOUT, after_help = EXIT_CODES)]
    Batch(BatchArgs),
    /// A fault-injecting OpenAI-compatible test upstream on 127.0.0.1, until SIGTERM or Ctrl-C.
    ///
    /// The upstream `demo` uses, as a process of its own: for trying a client or a policy
    /// without keys or network. Serves POST /v1/chat/completions (JSON and SSE, replies of
    /// deterministic words, usage counted with the model's tokenizer) and GET /v1/models.
    /// Prints "listening on http://127.0.0.1:PORT/v1" once it accepts connections.
    #[command(after_help = EXIT_CODES)]
    Upstream(UpstreamArgs),
}

/// Arguments of `tollgate upstream`.
#[derive(Debug, Args)]
pub(crate) struct UpstreamArgs {
    /// Port on 127.0.0.1 (0 picks a free one; the line printed at start names it).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Delay before every response head, in ms (with --latency-max-ms: the least of a uniform
    /// draw).
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Upper end of a uniform latency draw, in ms.
    #[arg(long)]
    pub latency_max_ms: Option<u64>,
    /// Delay between the SSE events of a stream, in ms.
    #[arg(long, default_value_t = 0)]
    pub drip_ms: u64,
    /// Reply length in words when a request sets no max_tokens.
    #[arg(long, default_value_t = 16)]
    pub words: usize,
    /// Inject the demo's faults: 5% 429 with Retry-After, 2% 503, 1% streams cut.
    #[arg(long)]
    pub faults: bool,
    /// Seed of the latency and fault draws.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Arguments of `tollgate batch`.
#[derive(Debug, Args)]
pub(crate) struct BatchArgs {
    /// Policy file.
    #[arg(long, short)]
    pub policy: PathBuf,
    /// Input file: one Batch API request per line.
    #[arg(long = "in", short = 'i', value_name = "FILE")]
    pub input: PathBuf,
    /// Output file: one result per input line (rebuilt from the journal on a rerun).
    #[arg(long, short, value_name = "FILE")]
    pub out: PathBuf,
    /// Journal directory (default: OUT.journal beside the output).
    #[arg(long, value_name = "DIR")]
    pub journal: Option<PathBuf>,
    /// Calls in flight at most.
    #[arg(long, short = 'c', default_value_t = 16)]
    pub concurrency: usize,
    /// Tenant of the lines that name none.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Queue priority of the lines that give none; low, so interactive calls sharing a budget
    /// go first.
    #[arg(long, default_value_t = -100, allow_negative_numbers = true)]
    pub priority: i16,
    /// After SIGTERM or Ctrl-C, seconds that calls in flight may take to finish.
    #[arg(long = "grace", value_name = "SECONDS", default_value_t = 30)]
    pub grace_secs: u64,
    /// No progress display and no summary.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Arguments of `tollgate serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Policy file with a [serve] section.
    #[arg(long, short, required_unless_present = "hash_key")]
    pub policy: Option<PathBuf>,
    /// Address to listen on, overriding serve.listen (port 0 picks a free one).
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Print the `hash = "sha256:..."` line of a virtual key for [[serve.key]] and exit.
    #[arg(long, value_name = "KEY", conflicts_with_all = ["policy", "listen"])]
    pub hash_key: Option<String>,
}

/// Arguments of `tollgate check`.
#[derive(Debug, Args)]
struct CheckArgs {
    /// Policy file (TOML, or JSON when it ends in .json or starts with `{`).
    policy: PathBuf,
}

/// Arguments of `tollgate count`.
#[derive(Debug, Args)]
pub(crate) struct CountArgs {
    /// Model whose tokenizer and price apply, e.g. gpt-4o. With --chat it defaults to the
    /// request's own "model".
    #[arg(long, short)]
    pub model: Option<String>,
    /// Input file; `-` or nothing reads stdin.
    pub file: Option<PathBuf>,
    /// The input is an OpenAI chat-completions request (JSON): count the prompt with the
    /// per-message overhead, and show the completion allowance it asks for.
    #[arg(long, conflicts_with = "jsonl")]
    pub chat: bool,
    /// One text per line: a JSON string or {"text": "...", "model": "..."} (model optional).
    /// Prints one count per line; a bad line prints `error` there, is named on stderr, and
    /// makes the exit status 2.
    #[arg(long)]
    pub jsonl: bool,
    /// Print JSON instead of text (one object per line with --jsonl).
    #[arg(long)]
    pub json: bool,
    /// Use this policy's [prices] and [models] over the bundled model table.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Split the text into chunks of at most N tokens, cut between paragraphs, else sentences,
    /// else words (inside a word only when it alone is longer). Prints one JSON object per chunk
    /// and line: {"text", "tokens", "exact", "start", "end", "overlap"} (byte offsets in the
    /// input; "overlap": bytes repeated from the previous chunk). Without --overlap the texts,
    /// concatenated, are the input byte for byte. N may not exceed the model's context window.
    #[arg(long, value_name = "N", conflicts_with_all = ["chat", "jsonl"])]
    pub split: Option<usize>,
    /// With --split: start each chunk after the first with up to K tokens of the end of the one
    /// before (cut at a word boundary), within the N tokens. K must be less than N.
    #[arg(long, value_name = "K", requires = "split", default_value_t = 0)]
    pub overlap: usize,
}

/// Arguments of `tollgate simulate`.
#[derive(Debug, Args)]
pub(crate) struct SimulateArgs {
    /// Policy file.
    #[arg(long, short)]
    pub policy: PathBuf,
    /// Trace file, one JSON object per line (`-` reads stdin).
    #[arg(long, short)]
    pub trace: PathBuf,
    /// Stop at the first bad trace line (exit status 2) instead of skipping it.
    #[arg(long)]
    pub strict: bool,
    /// Also write the summary as JSON to this file: totals (done, gave_up, denied, retries,
    /// fallbacks, give-ups by code), per target and per budget.
    #[arg(long, value_name = "FILE")]
    pub summary_json: Option<PathBuf>,
    /// Do not print the summary (totals, per-target and per-budget tables) on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Arguments of `tollgate demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// How many calls to make.
    #[arg(long, default_value_t = 2000)]
    pub calls: usize,
    /// Seed of the workload and of the upstreams' faults.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Arguments of `tollgate bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Base URL of an OpenAI-compatible API (`http://host:port/v1`); default: an upstream this
    /// command starts on 127.0.0.1 in another process (see --upstream).
    #[arg(long)]
    pub url: Option<String>,
    /// Requests per measured run (each side runs twice, after a warm-up of a tenth).
    #[arg(long, short = 'n', default_value_t = 20_000)]
    pub requests: usize,
    /// Requests in flight at once.
    #[arg(long, short = 'c', default_value_t = 64)]
    pub concurrency: usize,
    /// Streamed requests (SSE) instead of JSON.
    #[arg(long)]
    pub stream: bool,
    /// The model sent.
    #[arg(long, default_value = "gpt-4o")]
    pub model: String,
    /// Words per answer (`max_tokens`).
    #[arg(long, default_value_t = 16)]
    pub words: usize,
    /// Runtime worker threads of the client side.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// The upstream: nginx with canned answers (auto picks it when installed), `tollgate
    /// upstream` in its own process, or the test upstream inside this process (which counts its
    /// work as the client's). Ignored with --url.
    #[arg(long, value_enum, default_value_t = bench::upstream::Kind::Auto)]
    pub upstream: bench::upstream::Kind,
    /// Measure `tollgate serve` instead: the same bare client through the proxy (with a virtual
    /// key) against straight to the upstream, at concurrency C and then at a fixed --rate.
    #[arg(long, conflicts_with = "stream")]
    pub serve: bool,
    /// Requests per second of the fixed-rate run of --serve (open loop, 3 seconds per side).
    #[arg(long, default_value_t = 2000)]
    pub rate: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Check(a) => check::run(&a.policy),
        Command::Count(a) => count::run(&a),
        Command::Simulate(a) => simulate::run(&a),
        Command::Demo(a) => demo::run(&a),
        Command::Bench(a) => bench::run(&a),
        Command::Serve(a) => serve::run(&a),
        Command::Upstream(a) => upstream::run(&a),
        Command::Batch(a) => batch::run(&a),
    };
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}

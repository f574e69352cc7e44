//! The upstream `tollgate bench` measures against: one that is never the bottleneck and runs in
//! another process, so the client's own cost is what the figures show.
//!
//! - `nginx` (the default when `nginx` is on the PATH): one worker serving a canned
//!   `chat.completion` (`POST /v1/chat/completions`) and a canned stream of `chat.completion.chunk`
//!   events ending with a usage chunk and `[DONE]` (`POST /sse/v1/chat/completions`) from memory;
//! - `process`: this binary's own `tollgate upstream` in a process of its own;
//! - `inline`: the test upstream inside the benchmark's process, on the same runtime threads as
//!   the client (what `tollgate bench` measured before: it hides the client's cost, since the
//!   upstream's work is counted with it).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tollgate_testkit::TestUpstream;

/// Which upstream to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Kind {
    /// nginx when it is installed, else `process`.
    Auto,
    /// nginx with canned answers, in its own process.
    Nginx,
    /// `tollgate upstream`, in its own process.
    Process,
    /// The test upstream inside the benchmark's own process.
    Inline,
}

/// A started upstream; stopped when dropped.
pub(crate) struct Upstream {
    /// Base URL of JSON answers (`…/v1`).
    pub json_base: String,
    /// Base URL of streamed answers.
    pub sse_base: String,
    /// What it is, for the report.
    pub what: String,
    /// Whether it runs in another process (so this process's CPU time is the client's).
    pub separate: bool,
    guard: Guard,
}

enum Guard {
    Child(Child, Option<PathBuf>),
    Inline(#[allow(dead_code)] TestUpstream),
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Guard::Child(child, dir) = &mut self.guard {
            // SIGTERM: nginx's master stops its worker, `tollgate upstream` exits cleanly.
            // SAFETY: kill(2) on the pid of a child this process started and has not reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            if let Some(dir) = dir {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

/// Starts the upstream `kind` asks for, answering `words` words per answer.
pub(crate) fn start(kind: Kind, words: usize) -> Result<Upstream, String> {
    match kind {
        Kind::Auto if on_path("nginx") => nginx(words),
        Kind::Auto | Kind::Process => process(words),
        Kind::Nginx => nginx(words),
        Kind::Inline => {
            let up = TestUpstream::builder()
                .default_words(words)
                .start()
                .map_err(|e| format!("cannot start the test upstream: {e}"))?;
            let base = up.base_url();
            Ok(Upstream {
                json_base: base.clone(),
                sse_base: base,
                what: "the test upstream inside this process (its CPU is counted with the \
                       client's)"
                    .into(),
                separate: false,
                guard: Guard::Inline(up),
            })
        }
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// A loopback port nobody listens on now.
fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free loopback port: {e}"))
}

/// Waits (at most 5 s) until `addr` accepts connections.
fn wait_listening(addr: SocketAddr, child: &mut Child) -> Result<(), String> {
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("it exited at start ({status})"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("nothing listens on {addr} after 5 s"))
}

fn process(words: usize) -> Result<Upstream, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let mut child = Command::new(exe)
        .args(["upstream", "--words", &words.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start `tollgate upstream`: {e}"))?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    let Some(base) = line.trim().strip_prefix("listening on ").map(str::to_owned) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!(
            "`tollgate upstream` said {line:?} instead of its address"
        ));
    };
    let pid = child.id();
    Ok(Upstream {
        json_base: base.clone(),
        sse_base: base,
        what: format!("`tollgate upstream` in its own process (pid {pid})"),
        separate: true,
        guard: Guard::Child(child, None),
    })
}

fn nginx(words: usize) -> Result<Upstream, String> {
    let port = free_port()?;
    let dir = std::env::temp_dir().join(format!("tollgate-bench-nginx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let conf = dir.join("nginx.conf");
    let text = nginx_conf(port, &completion(words), &events(words));
    std::fs::File::create(&conf)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", conf.display()))?;
    let prefix = format!("{}/", dir.display());
    let mut child = Command::new("nginx")
        .args([
            "-p",
            &prefix,
            "-e",
            "error.log",
            "-c",
            "nginx.conf",
            "-g",
            "daemon off;",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start nginx: {e}"))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    if let Err(e) = wait_listening(addr, &mut child) {
        let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
        return Err(format!("nginx did not start: {e}\n{log}"));
    }
    let pid = child.id();
    Ok(Upstream {
        json_base: format!("http://{addr}/v1"),
        sse_base: format!("http://{addr}/sse/v1"),
        what: format!("nginx, one worker, canned answers from memory (pid {pid})"),
        separate: true,
        guard: Guard::Child(child, Some(dir)),
    })
}

/// The answer's words.
fn words_of(n: usize) -> Vec<String> {
    const WORDS: [&str; 8] = [
        "budgets", "hold", "under", "load", "when", "every", "call", "counts",
    ];
    (0..n.max(1))
        .map(|i| WORDS[i % WORDS.len()].to_owned())
        .collect()
}

fn usage(words: usize) -> serde_json::Value {
    json!({"prompt_tokens": 12, "completion_tokens": words, "total_tokens": 12 + words})
}

/// The canned `chat.completion`.
fn completion(words: usize) -> String {
    json!({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_700_000_000,
        "model": "gpt-4o",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": words_of(words).join(" ")}}],
        "usage": usage(words),
    })
    .to_string()
}

/// The canned stream: a role chunk, a chunk per word, the finish, the usage chunk, `[DONE]`.
fn events(words: usize) -> String {
    let chunk = |delta: serde_json::Value, finish: Option<&str>| {
        json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1_700_000_000,
               "model": "gpt-4o",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut out = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    for (i, w) in words_of(words).iter().enumerate() {
        let text = if i == 0 { w.clone() } else { format!(" {w}") };
        out.push(chunk(json!({"content": text}), None));
    }
    out.push(chunk(json!({}), Some("stop")));
    out.push(
        json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk",
                    "created": 1_700_000_000, "model": "gpt-4o", "choices": [],
                    "usage": usage(words)}),
    );
    let mut text: String = out.iter().map(|c| format!("data: {c}\n\n")).collect();
    text.push_str("data: [DONE]\n\n");
    text
}

/// nginx's configuration: the answers inside single-quoted strings (which may span lines; `\`
/// and `'` escaped; the generated answers hold no `$`, which nginx would read as a variable).
fn nginx_conf(port: u16, json_body: &str, sse_body: &str) -> String {
    let quote = |s: &str| s.replace('\\', "\\\\").replace('\'', "\\'");
    debug_assert!(!json_body.contains('$') && !sse_body.contains('$'));
    format!(
        "worker_processes 1;\n\
         pid nginx.pid;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n\
         \x20 access_log off;\n\
         \x20 keepalive_requests 10000000;\n\
         \x20 keepalive_timeout 120s;\n\
         \x20 client_body_buffer_size 64k;\n\
         \x20 client_body_temp_path tmp;\n\
         \x20 server {{\n\
         \x20   listen 127.0.0.1:{port};\n\
         \x20   location = /v1/chat/completions {{ default_type application/json; return 200 '{}'; }}\n\
         \x20   location = /sse/v1/chat/completions {{ default_type text/event-stream; return 200 '{}'; }}\n\
         \x20 }}\n\
         }}\n",
        quote(json_body),
        quote(sse_body)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canned_answers_are_what_clients_expect() {
        let c: serde_json::Value = serde_json::from_str(&completion(3)).unwrap();
        assert_eq!(c["choices"][0]["message"]["content"], "budgets hold under");
        assert_eq!(c["usage"]["completion_tokens"], 3);
        let e = events(3);
        let data: Vec<&str> = e
            .split("\n\n")
            .filter_map(|b| b.strip_prefix("data: "))
            .collect();
        assert_eq!(data.len(), 1 + 3 + 1 + 1 + 1);
        assert_eq!(*data.last().unwrap(), "[DONE]");
        let usage: serde_json::Value = serde_json::from_str(data[data.len() - 2]).unwrap();
        assert_eq!(usage["usage"]["total_tokens"], 15);
    }

    #[test]
    fn quotes_and_backslashes_are_escaped_for_nginx() {
        let conf = nginx_conf(1, r#"{"a":"it's \"x\""}"#, "data: x\n\n");
        assert!(
            conf.contains(r#"return 200 '{"a":"it\'s \\"x\\""}'"#),
            "{conf}"
        );
    }
}

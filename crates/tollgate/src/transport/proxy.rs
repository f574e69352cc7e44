//! HTTP proxies through `CONNECT`: [`ProxyConfig`] (from the policy or the environment),
//! `NO_PROXY` matching, and opening a tunnel.
//!
//! Every target, `http` or `https`, goes through a `CONNECT host:port` tunnel; TLS and HTTP then
//! run over the tunnel exactly as over a direct TCP connection. The proxy's user info, if any,
//! becomes a `Proxy-Authorization: Basic` header and never shows in `Debug` output or errors.

use super::percent::percent_decode;
use std::fmt;
use std::net::IpAddr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::retry::ConnectKind;

/// Longest CONNECT reply head read from a proxy.
const MAX_REPLY_HEAD: usize = 16 * 1024;

/// An HTTP proxy reached through `CONNECT`, and the hosts that bypass it.
///
/// `Debug` shows the URL with its user info replaced by `***`.
///
/// ```
/// use tollgate::transport::ProxyConfig;
///
/// let proxy = ProxyConfig::from_vars(|name| match name {
///     "HTTPS_PROXY" => Some("http://user:hunter2@proxy.internal:3128".to_owned()),
///     "NO_PROXY" => Some("localhost, .internal ,10.0.0.7".to_owned()),
///     _ => None,
/// })
/// .expect("a proxy is configured");
/// assert_eq!(proxy.no_proxy, ["localhost", ".internal", "10.0.0.7"]);
/// assert!(proxy.bypasses("api.internal") && proxy.bypasses("10.0.0.7"));
/// assert!(!proxy.bypasses("api.openai.com"));
/// assert!(!format!("{proxy:?}").contains("hunter2"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// `http://[user:password@]host[:port]` (port 80 when absent; a URL without a scheme is
    /// taken as `http://`). User and password may be percent-encoded.
    pub url: String,
    /// Hosts reached directly: `*` for every host, an IP address for exactly that address, or a
    /// domain for itself and its subdomains (`example.com` and `.example.com` both match
    /// `example.com` and `api.example.com`). Compared case-insensitively.
    pub no_proxy: Vec<String>,
}

impl fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("url", &redact(&self.url))
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

impl ProxyConfig {
    /// A proxy at `url` with no exceptions.
    pub fn new(url: impl Into<String>) -> ProxyConfig {
        ProxyConfig {
            url: url.into(),
            no_proxy: Vec::new(),
        }
    }

    /// The proxy the process environment names; see [`ProxyConfig::from_vars`].
    pub fn from_env() -> Option<ProxyConfig> {
        ProxyConfig::from_vars(|name| std::env::var(name).ok())
    }

    /// The proxy named by the variables `get` returns: the first non-empty one of
    /// `HTTPS_PROXY`, `https_proxy`, `HTTP_PROXY`, `http_proxy`, with the comma-separated
    /// exceptions of `NO_PROXY` (else `no_proxy`). `None` when none of them is set.
    ///
    /// `HTTP_PROXY` is ignored when `REQUEST_METHOD` is set: in a CGI program it comes from the
    /// client's `Proxy:` request header ("httpoxy"), not from the operator.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Option<ProxyConfig> {
        let var = |name: &str| {
            get(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let cgi = get("REQUEST_METHOD").is_some();
        let url = var("HTTPS_PROXY")
            .or_else(|| var("https_proxy"))
            .or_else(|| if cgi { None } else { var("HTTP_PROXY") })
            .or_else(|| var("http_proxy"))?;
        let no_proxy = var("NO_PROXY")
            .or_else(|| var("no_proxy"))
            .map(|list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|e| !e.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Some(ProxyConfig { url, no_proxy })
    }

    /// True when `host` (a name or an IP address, IPv6 with or without brackets) is reached
    /// directly because of [`ProxyConfig::no_proxy`].
    pub fn bypasses(&self, host: &str) -> bool {
        bypasses(&self.no_proxy, host)
    }
}

fn bypasses(entries: &[String], host: &str) -> bool {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let host_ip = host.parse::<IpAddr>().ok();
    entries.iter().any(|entry| {
        let entry = entry.trim().to_ascii_lowercase();
        if entry == "*" {
            return true;
        }
        let bare = entry.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return host_ip == Some(ip);
        }
        if host_ip.is_some() {
            return false;
        }
        let domain = entry
            .trim_start_matches("*.")
            .trim_start_matches('.')
            .trim_end_matches('.');
        !domain.is_empty()
            && (host == domain
                || (host.len() > domain.len()
                    && host.ends_with(domain)
                    && host.as_bytes()[host.len() - domain.len() - 1] == b'.'))
    })
}

/// `url` with everything between `://` and the last `@` replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    let Some(at) = url.rfind('@') else {
        return url.to_owned();
    };
    let start = url.find("://").map_or(0, |i| i + 3).min(at);
    format!("{}***{}", &url[..start], &url[at..])
}

/// A parsed [`ProxyConfig`], ready to open tunnels.
#[derive(Clone)]
pub(crate) struct Proxy {
    host: String,
    port: u16,
    /// `Basic <base64(user:password)>`, when the URL has user info.
    authorization: Option<String>,
    no_proxy: Vec<String>,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr())
            .field("authenticated", &self.authorization.is_some())
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

impl Proxy {
    /// Parses `config.url`; the error names the problem and the redacted URL.
    pub(crate) fn parse(config: &ProxyConfig) -> Result<Proxy, String> {
        let shown = redact(config.url.trim());
        let problem = |what: &str| format!("proxy URL `{shown}`: {what}");
        let url = config.url.trim();
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
                return Err(problem(
                    "TLS to the proxy (https://) is not supported; use an http:// proxy URL \
                     (HTTPS targets are still encrypted end to end through CONNECT)",
                ));
            }
            Some((scheme, _)) => {
                return Err(problem(&format!(
                    "unsupported scheme `{scheme}` (only http:// proxies are supported)"
                )));
            }
            None => url,
        };
        // The last `@` ends the user info, so an unencoded `@`, `/` or `#` in the password
        // does not leak into the host.
        let (userinfo, hostpart) = match rest.rfind('@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let hostport = hostpart.split(['/', '?', '#']).next().unwrap_or_default();
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| problem("unclosed `[` in the host"))?;
            match after {
                "" => (host, None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None => return Err(problem("unexpected text after the IPv6 address")),
                },
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(problem("no host"));
        }
        let port = match port {
            None | Some("") => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| problem("the port is not a number from 1 to 65535"))?,
        };
        let authorization = userinfo.map(|info| {
            let (user, password) = info.split_once(':').unwrap_or((info, ""));
            let pair = format!("{}:{}", percent_decode(user), percent_decode(password));
            format!("Basic {}", STANDARD.encode(pair))
        });
        Ok(Proxy {
            host: host.to_ascii_lowercase(),
            port,
            authorization,
            no_proxy: config.no_proxy.clone(),
        })
    }

    /// True when requests to `host` go through this proxy.
    pub(crate) fn applies_to(&self, host: &str) -> bool {
        !bypasses(&self.no_proxy, host)
    }

    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// `host:port` of the proxy, for messages.
    pub(crate) fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Asks the proxy on `tcp` for a tunnel to `authority` (`host:port`, IPv6 in brackets) and
    /// reads its reply head. On success the stream is a tunnel to the target.
    pub(crate) async fn tunnel(
        &self,
        tcp: &mut TcpStream,
        authority: &str,
    ) -> Result<(), (ConnectKind, String)> {
        let addr = self.addr();
        let io_fail = |what: &str, e: std::io::Error| {
            let kind = match e.kind() {
                std::io::ErrorKind::ConnectionRefused => ConnectKind::Refused,
                std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::UnexpectedEof => ConnectKind::Reset,
                _ => ConnectKind::Other,
            };
            (kind, format!("proxy {addr}: {what}: {e}"))
        };
        let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
        if let Some(auth) = &self.authorization {
            request.push_str("Proxy-Authorization: ");
            request.push_str(auth);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        tcp.write_all(request.as_bytes())
            .await
            .map_err(|e| io_fail("sending CONNECT failed", e))?;
        let mut head = Vec::with_capacity(256);
        let mut buf = [0u8; 1024];
        let end = loop {
            let n = tcp
                .read(&mut buf)
                .await
                .map_err(|e| io_fail("reading the CONNECT reply failed", e))?;
            if n == 0 {
                return Err((
                    ConnectKind::Reset,
                    format!("proxy {addr} closed the connection before answering CONNECT"),
                ));
            }
            head.extend_from_slice(&buf[..n]);
            if let Some(i) = memchr::memmem::find(&head, b"\r\n\r\n") {
                break i + 4;
            }
            if head.len() > MAX_REPLY_HEAD {
                return Err((
                    ConnectKind::Other,
                    format!("proxy {addr} sent a CONNECT reply head over {MAX_REPLY_HEAD} bytes"),
                ));
            }
        };
        let (status, reason) = status_line(&head).ok_or_else(|| {
            (
                ConnectKind::Other,
                format!("proxy {addr} answered CONNECT with something that is not HTTP"),
            )
        })?;
        if !(200..300).contains(&status) {
            let hint = if status == 407 {
                if self.authorization.is_some() {
                    " (the proxy refused the credentials in the proxy URL)"
                } else {
                    " (put user:password@ in the proxy URL)"
                }
            } else {
                ""
            };
            return Err((
                ConnectKind::Other,
                format!("proxy {addr} refused the tunnel: {status} {reason}{hint}"),
            ));
        }
        if head.len() > end {
            // Every protocol run through the tunnel has the client speak first.
            return Err((
                ConnectKind::Other,
                format!("proxy {addr} sent data after its CONNECT reply"),
            ));
        }
        Ok(())
    }
}

/// The status code and reason phrase (printable ASCII, at most 80 characters) of a reply head.
fn status_line(head: &[u8]) -> Option<(u16, String)> {
    let line_end = memchr::memmem::find(head, b"\r\n")?;
    let line = std::str::from_utf8(&head[..line_end]).ok()?;
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    let status = code
        .parse::<u16>()
        .ok()
        .filter(|s| (100..600).contains(s))?;
    let reason = parts
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(80)
        .collect::<String>()
        .trim()
        .to_owned();
    Some((status, reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    fn url_of(pairs: &[(&str, &str)]) -> Option<String> {
        ProxyConfig::from_vars(vars(pairs)).map(|p| p.url)
    }

    #[test]
    fn environment_precedence() {
        assert_eq!(url_of(&[]), None);
        assert_eq!(url_of(&[("NO_PROXY", "*")]), None);
        let all = [
            ("http_proxy", "http://d:1"),
            ("HTTP_PROXY", "http://c:1"),
            ("https_proxy", "http://b:1"),
            ("HTTPS_PROXY", "http://a:1"),
        ];
        assert_eq!(url_of(&all).as_deref(), Some("http://a:1"));
        assert_eq!(url_of(&all[..3]).as_deref(), Some("http://b:1"));
        assert_eq!(url_of(&all[..2]).as_deref(), Some("http://c:1"));
        assert_eq!(url_of(&all[..1]).as_deref(), Some("http://d:1"));
        // Empty values count as unset.
        let empty = [("HTTPS_PROXY", "  "), ("http_proxy", "http://d:1")];
        assert_eq!(url_of(&empty).as_deref(), Some("http://d:1"));
        // httpoxy: under CGI, HTTP_PROXY is the client's `Proxy:` header.
        let cgi = [("REQUEST_METHOD", "GET"), ("HTTP_PROXY", "http://evil:1")];
        assert_eq!(url_of(&cgi), None);
        let cgi = [("REQUEST_METHOD", "GET"), ("HTTPS_PROXY", "http://ok:1")];
        assert_eq!(url_of(&cgi).as_deref(), Some("http://ok:1"));
    }

    #[test]
    fn no_proxy_list_from_the_environment() {
        let p = ProxyConfig::from_vars(vars(&[
            ("HTTPS_PROXY", "http://p:3128"),
            ("no_proxy", "lower.example"),
            ("NO_PROXY", " a.example, ,.b.example,127.0.0.1 ,"),
        ]))
        .unwrap();
        assert_eq!(p.no_proxy, ["a.example", ".b.example", "127.0.0.1"]);
        let p = ProxyConfig::from_vars(vars(&[
            ("HTTPS_PROXY", "http://p:3128"),
            ("no_proxy", "lower.example"),
        ]))
        .unwrap();
        assert_eq!(p.no_proxy, ["lower.example"]);
    }

    #[test]
    fn no_proxy_matching() {
        let list = |entries: &[&str]| ProxyConfig {
            url: "http://p:1".into(),
            no_proxy: entries.iter().map(|e| (*e).to_owned()).collect(),
        };
        let p = list(&[
            "example.com",
            ".internal",
            "*.corp",
            "10.0.0.7",
            "[::1]",
            "Upper.Case",
        ]);
        for host in [
            "example.com",
            "api.example.com",
            "EXAMPLE.COM.",
            "internal",
            "x.y.internal",
            "a.corp",
            "10.0.0.7",
            "::1",
            "[::1]",
            "upper.case",
        ] {
            assert!(p.bypasses(host), "{host} should bypass");
        }
        for host in [
            "badexample.com",
            "example.org",
            "10.0.0.70",
            "0.7",
            "::2",
            "com",
        ] {
            assert!(!p.bypasses(host), "{host} should use the proxy");
        }
        assert!(list(&["*"]).bypasses("anything.at.all"));
        assert!(!list(&[]).bypasses("example.com"));
        // A domain entry never matches an IP address by suffix.
        assert!(!list(&["0.0.1"]).bypasses("127.0.0.1"));
    }

    #[test]
    fn proxy_urls_parse() {
        let parse = |url: &str| Proxy::parse(&ProxyConfig::new(url));
        let p = parse("http://proxy.internal:3128").unwrap();
        assert_eq!(
            (p.host(), p.port(), p.authorization.is_none()),
            ("proxy.internal", 3128, true)
        );
        let p = parse("proxy.internal").unwrap();
        assert_eq!(p.addr(), "proxy.internal:80");
        let p = parse("HTTP://[::1]:8080/").unwrap();
        assert_eq!(p.addr(), "[::1]:8080");
        let p = parse("http://us%40er:p%3Ass@w/rd@proxy:3128").unwrap();
        assert_eq!(p.addr(), "proxy:3128");
        let expected = format!("Basic {}", STANDARD.encode("us@er:p:ss@w/rd"));
        assert_eq!(p.authorization.as_deref(), Some(expected.as_str()));
        let p = parse("http://user@proxy:1").unwrap();
        let expected = format!("Basic {}", STANDARD.encode("user:"));
        assert_eq!(p.authorization.as_deref(), Some(expected.as_str()));
        assert!(!format!("{p:?}").contains(&STANDARD.encode("user:")));
    }

    #[test]
    fn bad_proxy_urls_are_explained_without_the_password() {
        for (url, what) in [
            ("https://u:SECRET-PW@proxy:443", "not supported"),
            (
                "socks5://u:SECRET-PW@proxy:1080",
                "unsupported scheme `socks5`",
            ),
            ("http://u:SECRET-PW@proxy:99999", "port"),
            ("http://u:SECRET-PW@proxy:0", "port"),
            ("http://u:SECRET-PW@:3128", "no host"),
            ("http://u:SECRET-PW@[::1:3128", "unclosed"),
        ] {
            let err = Proxy::parse(&ProxyConfig::new(url)).unwrap_err();
            assert!(err.contains(what), "{url}: {err}");
            assert!(!err.contains("SECRET-PW"), "{err}");
            assert!(err.contains("***@"), "{err}");
        }
    }

    #[test]
    fn debug_redacts_user_info() {
        let config = ProxyConfig {
            url: "http://alice:s3cr%40t@proxy:3128".into(),
            no_proxy: vec!["localhost".into()],
        };
        let text = format!("{config:?} {config:#?}");
        assert!(!text.contains("s3cr") && !text.contains("alice"), "{text}");
        assert!(text.contains("http://***@proxy:3128"), "{text}");
        assert_eq!(redact("http://proxy:1"), "http://proxy:1");
        assert_eq!(redact("u:p@proxy:1"), "***@proxy:1");
    }

    #[test]
    fn connect_reply_status_lines() {
        assert_eq!(
            status_line(b"HTTP/1.1 200 Connection established\r\n\r\n"),
            Some((200, "Connection established".into()))
        );
        assert_eq!(
            status_line(b"HTTP/1.0 407\r\n\r\n"),
            Some((407, String::new()))
        );
        assert_eq!(status_line(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_line(b"HTTP/1.1 2000 x\r\n"), None);
        assert_eq!(status_line(b"HTTP/1.1 200 no line end"), None);
        let (_, reason) = status_line(b"HTTP/1.1 502 Bad\x07 Gateway\r\n").unwrap();
        assert_eq!(reason, "Bad Gateway");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%zz%4"), "a b%zz%4");
        assert_eq!(percent_decode("%C3%A9"), "\u{e9}");
    }
}

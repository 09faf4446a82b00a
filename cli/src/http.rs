//! The admin HTTP API over a plain blocking connection (the API is JSON on HTTP/1.1; a client
//! library would be most of fjordctl's build): GET, and PUT/POST/DELETE with a JSON body.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::error::{CliError, Result};

pub struct Admin {
    /// host:port
    authority: String,
    /// The path prefix, without a trailing slash.
    base: String,
    timeout: Duration,
}

impl Admin {
    pub fn new(url: &str, timeout: Duration) -> Result<Admin> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            CliError::usage(format!("admin URL {url:?} must start with http:// (the admin API serves plain HTTP)"))
        })?;
        let (authority, base) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        crate::profile::check_host_port(authority)
            .map_err(|_| CliError::usage(format!("admin URL {url:?} has no host:port")))?;
        Ok(Admin { authority: authority.to_string(), base: base.to_string(), timeout })
    }

    pub fn url(&self) -> String {
        format!("http://{}{}", self.authority, self.base)
    }

    /// `GET path`: the status and body.
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        self.request("GET", path, None)
    }

    /// `method path`, with a JSON body when given: the status and body.
    pub fn request(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<(u16, String)> {
        let unreachable = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => CliError::unreachable(format!(
                "admin API at {}: no answer within {} s (--timeout sets how long to wait)",
                self.url(),
                self.timeout.as_secs()
            )),
            _ => CliError::unreachable(format!("admin API at {}: {e}", self.url())),
        };
        let addr = self
            .authority
            .to_socket_addrs()
            .map_err(unreachable)?
            .next()
            .ok_or_else(|| CliError::unreachable(format!("admin API at {}: no address", self.url())))?;
        let mut s = TcpStream::connect_timeout(&addr, self.timeout).map_err(unreachable)?;
        s.set_read_timeout(Some(self.timeout)).map_err(unreachable)?;
        s.set_write_timeout(Some(self.timeout)).map_err(unreachable)?;
        let mut head = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nConnection: close\r\n",
            self.base, self.authority
        );
        match body {
            Some(b) => head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n", b.len())),
            // A body-less POST or DELETE still says so: some servers wait for a length otherwise.
            None if method != "GET" => head.push_str("Content-Length: 0\r\n\r\n"),
            None => head.push_str("\r\n"),
        }
        let mut request = head.into_bytes();
        request.extend_from_slice(body.unwrap_or_default());
        // A server may answer (413, 400) and close before reading a large body: its answer,
        // when there is one, says more than the broken pipe.
        let written = s.write_all(&request).and_then(|_| s.flush());
        let mut raw = Vec::new();
        let read = s.read_to_end(&mut raw);
        let parsed = parse_response(&raw);
        match (written, read, parsed) {
            (_, _, Some(answer)) => Ok(answer),
            (Err(e), _, None) | (Ok(()), Err(e), None) => Err(unreachable(e)),
            (Ok(()), Ok(_), None) => {
                Err(CliError::unreachable(format!("admin API at {}: not an HTTP answer", self.url())))
            }
        }
    }

    /// `GET path` of a JSON endpoint; a status outside `ok` is a failure with the API's message.
    pub fn json(&self, path: &str, ok: &[u16]) -> Result<(u16, serde_json::Value)> {
        self.call("GET", path, None, ok)
    }

    /// `method path` of a JSON endpoint, with `body` as JSON when given; a status outside `ok`
    /// is a failure with the API's message (its `{"error": ...}`, else the body as it is).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
        ok: &[u16],
    ) -> Result<(u16, serde_json::Value)> {
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap_or_default());
        let (status, text) = self.request(method, path, bytes.as_deref())?;
        let value = serde_json::from_str::<serde_json::Value>(&text);
        if !ok.contains(&status) {
            let msg = match &value {
                Ok(v) => v["error"].as_str().map(str::to_string).unwrap_or_else(|| text.trim().to_string()),
                Err(_) if text.trim().is_empty() => "(no message)".to_string(),
                Err(_) => text.trim().to_string(),
            };
            return Err(CliError::failed(format!("admin API {method} {path}: {status} {msg}")));
        }
        let value = value.map_err(|e| CliError::failed(format!("admin API {path}: not JSON ({e})")))?;
        Ok((status, value))
    }
}

/// An HTTP/1.1 answer's status and body, when `raw` is one.
fn parse_response(raw: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok())?;
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { unchunk(body) } else { body.to_string() };
    Some((status, body))
}

fn unchunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// `s` as one path segment: unreserved characters as they are, the rest percent-encoded.
pub fn segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn answers_parse() {
        let (status, body) = super::parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((status, body.as_str()), (200, "{}"));
        let chunked = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(super::parse_response(chunked).unwrap(), (404, "abcde".to_string()));
        assert!(super::parse_response(b"garbage").is_none());
    }

    #[test]
    fn names_are_one_path_segment() {
        assert_eq!(super::segment("my-transform_1.x"), "my-transform_1.x");
        assert_eq!(super::segment("a/b c?"), "a%2Fb%20c%3F");
    }
}

//! The admin HTTP API, GET only, over a plain blocking connection (the API is JSON on HTTP/1.1;
//! a client library would be most of fjordctl's build).

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
        let unreachable = |e: std::io::Error| CliError::unreachable(format!("admin API at {}: {e}", self.url()));
        let addr = self
            .authority
            .to_socket_addrs()
            .map_err(unreachable)?
            .next()
            .ok_or_else(|| CliError::unreachable(format!("admin API at {}: no address", self.url())))?;
        let mut s = TcpStream::connect_timeout(&addr, self.timeout).map_err(unreachable)?;
        s.set_read_timeout(Some(self.timeout)).map_err(unreachable)?;
        write!(
            s,
            "GET {}{path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
            self.base, self.authority
        )
        .map_err(unreachable)?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).map_err(unreachable)?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| CliError::unreachable(format!("admin API at {}: not an HTTP answer", self.url())))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| CliError::unreachable(format!("admin API at {}: not an HTTP answer", self.url())))?;
        let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            unchunk(body)
        } else {
            body.to_string()
        };
        Ok((status, body))
    }

    /// `GET path` of a JSON endpoint; a status outside `ok` is a failure with the API's message.
    pub fn json(&self, path: &str, ok: &[u16]) -> Result<(u16, serde_json::Value)> {
        let (status, body) = self.get(path)?;
        let value: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| CliError::failed(format!("admin API {path}: not JSON ({e})")))?;
        if !ok.contains(&status) {
            let msg = value["error"].as_str().map(str::to_string).unwrap_or_else(|| body.clone());
            return Err(CliError::failed(format!("admin API {path}: {status} {msg}")));
        }
        Ok((status, value))
    }
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

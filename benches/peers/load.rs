//! Load generators for the warm measurements: `wrk` for GETs, and a small raw
//! HTTP/1.1 keep-alive generator for HEAD, because wrk 4.1 cannot do HEAD: it
//! waits for the body that a HEAD response's Content-Length announces and never
//! completes a request (checked against docker-registry: 0 requests in 2 s).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// What one load run achieved.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub requests: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// Connect/read/write errors, timeouts and responses with status >= 400.
    pub errors: u64,
}

impl Load {
    pub fn requests_per_s(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
    pub fn gb_per_s(&self) -> f64 {
        self.bytes as f64 / self.seconds / 1e9
    }
}

/// `wrk -t2 -c<conns> -d<secs>s` GETting `url` with an `Accept` header; the Lua
/// `done()` prints one machine-readable line.
pub fn wrk(dir: &Path, url: &str, accept: &str, conns: usize, duration: Duration) -> Load {
    let script = dir.join("get.lua");
    std::fs::write(&script, wrk_script(accept)).expect("write wrk script");
    let output = Command::new("/usr/bin/wrk")
        .arg("-t2")
        .arg(format!("-c{conns}"))
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg("--timeout")
        .arg("10s")
        .arg("-s")
        .arg(&script)
        .arg(url)
        .output()
        .expect("run wrk (apt-get install wrk)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    parse_wrk(&stdout).unwrap_or_else(|| {
        panic!(
            "no WRK line from wrk ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn wrk_script(accept: &str) -> String {
    format!(
        r#"wrk.method = "GET"
wrk.headers["Accept"] = "{accept}"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK requests=%d bytes=%d duration_us=%d errors=%d\n",
    summary.requests, summary.bytes, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout))
end
"#
    )
}

fn parse_wrk(stdout: &str) -> Option<Load> {
    let line = stdout.lines().find(|l| l.starts_with("WRK "))?;
    let field = |name: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?
            .parse()
            .ok()
    };
    Some(Load {
        requests: field("requests")?,
        bytes: field("bytes")?,
        seconds: field("duration_us")? as f64 / 1e6,
        errors: field("errors")?,
    })
}

/// `conns` keep-alive connections sending `method path` back to back for
/// `duration`; bodies (GET) are read and counted, HEAD responses have none.
pub async fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    accept: &str,
    conns: usize,
    duration: Duration,
) -> Load {
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\n\r\n")
        .into_bytes();
    let started = Instant::now();
    let deadline = started + duration;
    let head = method == "HEAD";
    let tasks: Vec<_> = (0..conns)
        .map(|_| tokio::spawn(one_connection(addr, request.clone(), head, deadline)))
        .collect();
    let mut total = Load {
        requests: 0,
        bytes: 0,
        seconds: 0.0,
        errors: 0,
    };
    for task in tasks {
        let load = task.await.expect("load task");
        total.requests += load.requests;
        total.bytes += load.bytes;
        total.errors += load.errors;
    }
    total.seconds = started.elapsed().as_secs_f64();
    total
}

async fn one_connection(addr: SocketAddr, request: Vec<u8>, head: bool, deadline: Instant) -> Load {
    let mut load = Load {
        requests: 0,
        bytes: 0,
        seconds: 0.0,
        errors: 0,
    };
    let mut conn: Option<Conn> = None;
    while Instant::now() < deadline {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match TcpStream::connect(addr).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    conn.insert(Conn {
                        stream,
                        buf: Vec::with_capacity(16 * 1024),
                    })
                }
                Err(_) => {
                    load.errors += 1;
                    continue;
                }
            },
        };
        match c.exchange(&request, head).await {
            Ok((status, bytes, keep)) => {
                load.requests += 1;
                load.bytes += bytes;
                if status >= 400 {
                    load.errors += 1;
                }
                if !keep {
                    conn = None;
                }
            }
            Err(_) => {
                load.errors += 1;
                conn = None;
            }
        }
    }
    load
}

struct Conn {
    stream: TcpStream,
    /// Bytes read past the end of the previous response.
    buf: Vec<u8>,
}

impl Conn {
    /// Sends one request and reads its response: (status, bytes read, keep-alive).
    async fn exchange(&mut self, request: &[u8], head: bool) -> std::io::Result<(u16, u64, bool)> {
        self.stream.write_all(request).await?;
        let header_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await?;
        };
        let header = String::from_utf8_lossy(&self.buf[..header_end]).to_ascii_lowercase();
        let status: u16 = header
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        let length: u64 = header_value(&header, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let keep = header_value(&header, "connection") != Some("close");
        let body = if head { 0 } else { length };
        self.buf.drain(..header_end);
        let mut left = body;
        while left > 0 {
            if self.buf.is_empty() {
                self.fill().await?;
            }
            let take = left.min(self.buf.len() as u64) as usize;
            self.buf.drain(..take);
            left -= take as u64;
        }
        Ok((status, header_end as u64 + body, keep))
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn bad() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, "bad status line")
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The value of `name` in a lower-cased header block.
fn header_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim())
    })
}

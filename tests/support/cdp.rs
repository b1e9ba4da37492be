//! The Chrome DevTools Protocol over a minimal WebSocket client (RFC 6455:
//! masked text frames out, text frames in, fragments joined): enough to
//! read a page's DOM, click through it and take a screenshot of it. The
//! browser is started with `--remote-debugging-port=0`; the port it chose
//! is in `DevToolsActivePort` in its profile. Every read has a timeout.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use super::http::{read_reply, IO_TIMEOUT};
use super::wait_until;

/// A DevTools session with one page.
pub struct Cdp {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    next_id: u64,
}

impl Cdp {
    /// Attaches to the first page of the browser whose profile is
    /// `profile`, waiting up to a minute for it to start.
    pub fn attach(profile: &Path) -> Cdp {
        let file = profile.join("DevToolsActivePort");
        assert!(
            wait_until(Duration::from_secs(60), || std::fs::read_to_string(&file)
                .is_ok_and(|s| s.lines().count() >= 2)),
            "chromium wrote no DevToolsActivePort"
        );
        let port: u16 = std::fs::read_to_string(&file)
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let mut page = None;
        assert!(
            wait_until(Duration::from_secs(30), || {
                page = targets(port)
                    .into_iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_string));
                page.is_some()
            }),
            "chromium shows no page"
        );
        let url = page.unwrap();
        let path = &url[url.find("/devtools/").expect("a devtools url")..];
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.contains(" 101 "), "websocket upgrade refused: {line}");
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            if line.trim_end().is_empty() {
                break;
            }
        }
        Cdp {
            stream,
            reader,
            next_id: 1,
        }
    }

    /// Calls `method` and returns its result (events in between are
    /// dropped); panics on a protocol error.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let text = json!({ "id": id, "method": method, "params": params }).to_string();
        self.send(text.as_bytes());
        loop {
            let reply: Value = serde_json::from_slice(&self.receive()).unwrap();
            if reply["id"] == id {
                if let Some(error) = reply.get("error") {
                    panic!("{method}: {error}");
                }
                return reply["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page (promises awaited) and returns
    /// its value; panics if it threw.
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        );
        if let Some(e) = result.get("exceptionDetails") {
            panic!("{expression}: {e}");
        }
        result["result"]["value"].clone()
    }

    /// Evaluates `expression` until it is true (a throw counts as false:
    /// the page may not be there yet); how long that took.
    pub fn eval_until(&mut self, expression: &str, timeout: Duration) -> Duration {
        let started = Instant::now();
        let guarded =
            format!("(() => {{ try {{ return {expression}; }} catch {{ return false; }} }})()");
        loop {
            if self.eval(&guarded) == Value::Bool(true) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < timeout,
                "the page never made true: {expression}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A PNG of what the page shows now.
    pub fn screenshot(&mut self) -> Vec<u8> {
        let result = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        base64::engine::general_purpose::STANDARD
            .decode(result["data"].as_str().unwrap())
            .unwrap()
    }

    /// The share of `png`'s pixels that differ from its top-left pixel,
    /// measured by the browser itself (it decodes the PNG on a canvas): a
    /// blank page is 0.
    pub fn inked_share(&mut self, png: &[u8]) -> f64 {
        let data = base64::engine::general_purpose::STANDARD.encode(png);
        let expression = format!(
            "(async () => {{ const img = new Image(); img.src = 'data:image/png;base64,{data}';
               await img.decode(); const c = document.createElement('canvas');
               c.width = img.width; c.height = img.height; const g = c.getContext('2d');
               g.drawImage(img, 0, 0); const d = g.getImageData(0, 0, c.width, c.height).data;
               let inked = 0; for (let i = 0; i < d.length; i += 4)
                 if (d[i] !== d[0] || d[i + 1] !== d[1] || d[i + 2] !== d[2]) inked++;
               return inked / (d.length / 4); }})()"
        );
        self.eval(&expression).as_f64().unwrap()
    }

    fn send(&mut self, payload: &[u8]) {
        let mut frame = vec![0x81];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n < 65536 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [0x12, 0x34, 0x56, 0x78];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).unwrap();
    }

    /// The next whole text message.
    fn receive(&mut self) -> Vec<u8> {
        let mut message = Vec::new();
        loop {
            let mut head = [0u8; 2];
            self.reader.read_exact(&mut head).unwrap();
            let len = match head[1] & 0x7f {
                126 => {
                    let mut l = [0u8; 2];
                    self.reader.read_exact(&mut l).unwrap();
                    u16::from_be_bytes(l) as usize
                }
                127 => {
                    let mut l = [0u8; 8];
                    self.reader.read_exact(&mut l).unwrap();
                    u64::from_be_bytes(l) as usize
                }
                n => n as usize,
            };
            let mut payload = vec![0; len];
            self.reader.read_exact(&mut payload).unwrap();
            match head[0] & 0x0f {
                0x8 => panic!("the browser closed the DevTools connection"),
                0x9 | 0xa => continue,
                _ => message.extend(payload),
            }
            if head[0] & 0x80 != 0 {
                return message;
            }
        }
    }
}

/// The browser's targets (`/json/list`).
fn targets(port: u16) -> Vec<Value> {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return Vec::new();
    };
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let request =
        format!("GET /json/list HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return Vec::new();
    }
    let mut reader = BufReader::new(stream);
    match read_reply(&mut reader, false) {
        Ok(reply) => serde_json::from_slice(&reply.body).unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

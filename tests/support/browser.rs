//! The browser fixture: a headless Chromium in its own process group, and
//! the local page server it loads its page from.

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::http::{read_request_head, IO_TIMEOUT};

/// Chromium: `$STREAMHUB_CHROMIUM`, else `chromium` or `chromium-browser`
/// on the PATH. `None` (the test skips) when there is none, unless
/// `STREAMHUB_REQUIRE_BROWSER` is set: then a missing browser fails.
pub fn chromium() -> Option<PathBuf> {
    let found = find_chromium();
    if found.is_none() {
        assert!(
            std::env::var_os("STREAMHUB_REQUIRE_BROWSER").is_none(),
            "STREAMHUB_REQUIRE_BROWSER is set but chromium is not installed"
        );
        eprintln!("skipped: chromium is not installed (make test installs it)");
    }
    found
}

fn find_chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("STREAMHUB_CHROMIUM") {
        return Some(path.into());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// A headless Chromium in its own process group, ended (group and all)
/// when dropped.
pub struct Browser {
    child: Child,
    profile: PathBuf,
}

impl Browser {
    pub fn open(binary: &Path, url: &str) -> Browser {
        Browser::open_with(binary, url, &[])
    }

    /// Opens `url` with `extra` flags (`--remote-debugging-port=0` for
    /// [`super::cdp`], a window size).
    pub fn open_with(binary: &Path, url: &str, extra: &[&str]) -> Browser {
        use std::os::unix::process::CommandExt;
        let profile = std::env::temp_dir().join(format!(
            "streamhub-chromium-{}-{}",
            std::process::id(),
            super::unique()
        ));
        let child = Command::new(binary)
            .args(["--headless", "--no-sandbox", "--disable-gpu"])
            .args([
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
            ])
            .args(["--disable-background-networking", "--disable-dev-shm-usage"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromium");
        Browser { child, profile }
    }
}

impl Browser {
    /// The browser's profile directory (where `DevToolsActivePort` is).
    pub fn profile(&self) -> &Path {
        &self.profile
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Asked politely, the browser ends its helper processes and reaps
        // them; whatever is left goes with the group (whose id is the
        // child's pid, so nothing else is reached).
        let pid = self.child.id().to_string();
        let group = format!("-{pid}");
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Serves `page` to every GET on a local port until dropped (the page must
/// come from an http origin: Chromium treats file:// pages as opaque).
pub struct PageServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl PageServer {
    pub fn start(page: &'static [u8]) -> PageServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::Acquire) {
                    return;
                }
                let Ok(mut stream) = stream else { continue };
                stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let Ok(head) = read_request_head(&mut reader) else {
                    continue;
                };
                let found = head.starts_with("GET / ") || head.starts_with("GET /?");
                let (status, body): (&str, &[u8]) = if found {
                    ("200 OK", page)
                } else {
                    ("404 Not Found", b"")
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(body);
            }
        });
        PageServer { port, stop }
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the accept so the thread sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Waits for a message in `reports` (where the page reports what it saw)
/// whose content starts with `prefix`.
pub fn next_report(
    reports: &mut streamhub::hub::Subscription,
    prefix: &str,
    timeout: Duration,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = reports
            .recv_timeout(left)
            .unwrap_or_else(|| panic!("the page did not report '{prefix}' within {timeout:?}"));
        if m.content.starts_with(prefix) {
            return m.content.clone();
        }
    }
}

//! Living under systemd without libsystemd: the notify protocol over
//! `$NOTIFY_SOCKET` (READY, STOPPING, WATCHDOG), the watchdog interval from
//! `$WATCHDOG_USEC`, and journald-friendly log lines when `$JOURNAL_STREAM`
//! is set. Outside systemd every call here does nothing.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends notify messages to systemd; inert when `NOTIFY_SOCKET` is unset.
pub struct Notifier {
    socket: Option<(UnixDatagram, String)>,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        Notifier::new(std::env::var("NOTIFY_SOCKET").ok())
    }

    pub fn new(path: Option<String>) -> Notifier {
        let socket = path
            .filter(|p| !p.is_empty())
            .and_then(|p| UnixDatagram::unbound().ok().map(|s| (s, p)));
        Notifier { socket }
    }

    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// Sends one state line, e.g. `READY=1`. Failures are logged, never fatal.
    pub fn notify(&self, state: &str) {
        let Some((socket, path)) = &self.socket else {
            return;
        };
        let sent = if let Some(name) = path.strip_prefix('@') {
            send_abstract(socket, name, state.as_bytes())
        } else {
            socket.send_to(state.as_bytes(), path).map(drop)
        };
        if let Err(e) = sent {
            log::warn!("systemd notify {state:?} to {path}: {e}");
        }
    }
}

fn send_abstract(socket: &UnixDatagram, name: &str, msg: &[u8]) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    socket.send_to_addr(msg, &addr).map(drop)
}

/// How often to ping the watchdog: half of `WATCHDOG_USEC`, when it is set
/// for this process.
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim() != std::process::id().to_string() {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// True when stderr goes to the journal.
pub fn logging_to_journal() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some()
}

/// syslog priority of a log level, as journald reads it from `<N>`.
pub fn priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// Sets up env_logger (`RUST_LOG`, default `info`). Under journald: no
/// timestamp (the journal adds its own) and a `<N>` priority prefix.
pub fn init_logging() {
    let journal = logging_to_journal();
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    builder.format(move |buf, record| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("?");
        if journal {
            writeln!(
                buf,
                "<{}>[{name}] {}",
                priority(record.level()),
                record.args()
            )
        } else {
            writeln!(
                buf,
                "{} {:<5} [{name}] {}",
                buf.timestamp_millis(),
                record.level(),
                record.args()
            )
        }
    });
    builder.init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_reaches_a_datagram_socket() {
        let dir = std::env::temp_dir().join(format!("sh-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let listener = UnixDatagram::bind(&dir).unwrap();
        let notifier = Notifier::new(Some(dir.to_string_lossy().into_owned()));
        assert!(notifier.enabled());
        notifier.notify("READY=1");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let _ = std::fs::remove_file(&dir);
    }

    #[test]
    fn unset_socket_is_inert() {
        let notifier = Notifier::new(None);
        assert!(!notifier.enabled());
        notifier.notify("READY=1");
    }

    #[test]
    fn priorities_follow_syslog() {
        assert_eq!(priority(log::Level::Error), 3);
        assert_eq!(priority(log::Level::Info), 6);
    }
}

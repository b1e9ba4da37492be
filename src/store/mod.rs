//! Durable rooms (`--data-dir`): every accepted message is appended to an
//! on-disk log before it is acknowledged, and read back into the rooms at
//! start, so sequence numbers and ids go on across restarts.
//!
//! One log for all rooms, in segments (`segment`), of records with a length
//! and a CRC (`record`), written by one group-commit thread (`writer`).
//! The hub knows it only as a [`Journal`]; `App::start` composes them:
//! [`Store::open`] checks the directory, [`Store::recover`] feeds the
//! records to the hub (cutting a torn tail), [`Store::start`] starts the
//! writer.
//!
//! What each `--fsync` policy promises (README, "Durable rooms"):
//! - `always`: a publish is answered, and its message shown to
//!   subscribers, once it is synced to the disk: nothing answered or seen
//!   is lost to a crash or a power cut.
//! - `batch` (default): answered and shown once written to the file (the
//!   page cache): nothing answered or seen is lost when the process dies
//!   (kill -9, a panic, the OOM killer); a power cut or kernel crash loses
//!   at most the last [`writer::BATCH_SYNC_EVERY`] of messages.
//! - `never`: answered and shown at once; the writer writes behind (at
//!   most 32 MiB behind), the OS syncs when it likes. A kill -9 loses what
//!   was queued, a power cut what the OS had not written.

mod record;
mod segment;
mod writer;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use crate::error::Error;
use crate::hub::{Hub, Journal, Message, Ticket};
use segment::{Header, Segment};

/// The file that says a directory is a streamhub data directory, and of
/// which format; it is also locked while a server uses the directory.
pub const MARKER: &str = "streamhub-store";

/// When `--fsync` syncs the log to the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    Always,
    Batch,
    Never,
}

impl Fsync {
    pub fn parse(text: &str) -> Option<Fsync> {
        match text {
            "always" => Some(Fsync::Always),
            "batch" => Some(Fsync::Batch),
            "never" => Some(Fsync::Never),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Fsync::Always => "always",
            Fsync::Batch => "batch",
            Fsync::Never => "never",
        }
    }
}

/// Settings of the store, validated by `config`.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub dir: PathBuf,
    pub fsync: Fsync,
    /// Segments whose newest message is older are deleted (and not read
    /// at start); `None`: no age limit.
    pub retention_age: Option<Duration>,
    /// Size of each segment file (preallocated).
    pub segment_bytes: u64,
}

/// What [`Store::recover`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub messages: u64,
    pub segments: u64,
    /// Bytes of torn or corrupt records dropped.
    pub dropped_bytes: u64,
}

/// The durable log of one data directory.
pub struct Store {
    config: StoreConfig,
    /// Holds the directory's lock for as long as the store lives.
    _marker: File,
    /// The segments found by `open`, oldest first.
    found: Vec<u64>,
    shared: OnceLock<Arc<writer::Shared>>,
    writer: Mutex<Option<writer::Writer>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn dir_error(config: &StoreConfig, what: impl std::fmt::Display) -> Error {
    Error::Config(format!("--data-dir {}: {what}", config.dir.display()))
}

impl Store {
    /// Makes or checks the directory and takes its lock. Refuses (with an
    /// error naming the flag) a directory that holds other things, one of
    /// another format, and one another server is using.
    pub fn open(config: StoreConfig) -> Result<Store, Error> {
        let dir = &config.dir;
        fs::create_dir_all(dir).map_err(|e| dir_error(&config, e))?;
        let marker_path = dir.join(MARKER);
        let expected = format!("streamhub store format {}\n", segment::FORMAT);
        let marker = match fs::read(&marker_path) {
            Ok(text) if text == expected.as_bytes() => OpenOptions::new()
                .read(true)
                .open(&marker_path)
                .map_err(|e| dir_error(&config, e))?,
            Ok(text) => {
                let text = String::from_utf8_lossy(&text);
                return Err(dir_error(
                    &config,
                    match text.strip_prefix("streamhub store format ") {
                        Some(v) => format!(
                            "holds store format {}, this streamhub reads format {} only; use the streamhub version that wrote it, or another directory",
                            v.trim(),
                            segment::FORMAT
                        ),
                        None => format!("{MARKER} is not a streamhub marker; refusing to use this directory"),
                    },
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut names = fs::read_dir(dir)
                    .map_err(|e| dir_error(&config, e))?
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned());
                if let Some(name) = names.next() {
                    return Err(dir_error(
                        &config,
                        format!("not a streamhub data directory (it holds '{name}' and no {MARKER} file); give an empty or new directory"),
                    ));
                }
                let mut f = File::create(&marker_path).map_err(|e| dir_error(&config, e))?;
                f.write_all(expected.as_bytes())
                    .and_then(|_| f.sync_all())
                    .and_then(|_| segment::sync_dir(dir))
                    .map_err(|e| dir_error(&config, e))?;
                f
            }
            Err(e) => return Err(dir_error(&config, e)),
        };
        match marker.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(dir_error(
                    &config,
                    "another streamhub is using this directory",
                ))
            }
            Err(fs::TryLockError::Error(e)) => return Err(dir_error(&config, e)),
        }
        let mut found = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| dir_error(&config, e))? {
            let name = entry.map_err(|e| dir_error(&config, e))?.file_name();
            let name = name.to_string_lossy();
            match segment::number_of(&name) {
                Some(n) => found.push(n),
                None if name == MARKER => {}
                None => log::warn!("--data-dir {}: ignoring '{name}'", dir.display()),
            }
        }
        found.sort_unstable();
        Ok(Store {
            config,
            _marker: marker,
            found,
            shared: OnceLock::new(),
            writer: Mutex::new(None),
            thread: Mutex::new(None),
        })
    }

    /// Reads every segment into `restore`, in order; a torn or corrupt
    /// record ends its segment (logged, and the segment is cut there).
    /// Messages older than the retention age are not restored, and a
    /// segment holding only such messages is deleted.
    pub fn recover(
        &self,
        mut restore: impl FnMut(Message) -> Result<(), Error>,
    ) -> Result<Recovered, Error> {
        let config = &self.config;
        let dir = &config.dir;
        let started = Instant::now();
        let mut recovered = Recovered::default();
        let mut sealed = VecDeque::new();
        let mut last: Option<(Segment, u64, writer::Sealed)> = None;
        let now = SystemTime::now();
        for (i, &number) in self.found.iter().enumerate() {
            let is_last = i + 1 == self.found.len();
            let segment = Segment::open(dir, number).map_err(|e| dir_error(config, e))?;
            let bytes = fs::read(segment::path(dir, number)).map_err(|e| dir_error(config, e))?;
            let name = format!("{number:020}.seg");
            match segment::check_header(&bytes) {
                Header::Ok => {}
                Header::Unwritten if is_last => {
                    log::warn!("--data-dir {}: {name} was being made when the server stopped; starting it again", dir.display());
                    segment::rewrite_header(&segment).map_err(|e| dir_error(config, e))?;
                }
                Header::Unwritten | Header::Foreign => {
                    return Err(dir_error(
                        config,
                        format!("{name} is not a streamhub segment; refusing to start"),
                    ))
                }
                Header::Format(v) => {
                    return Err(dir_error(
                        config,
                        format!(
                            "{name} is in store format {v}, this streamhub reads format {} only",
                            segment::FORMAT
                        ),
                    ))
                }
            }
            let mut info = writer::Sealed::new(number);
            let mut kept = Ok(());
            let mut count = 0u64;
            let scanned = segment::scan(&bytes, |d| {
                info.note(&d.room, d.seq, d.timestamp());
                count += 1;
                let expired = config
                    .retention_age
                    .is_some_and(|age| d.timestamp() + age < now);
                if kept.is_ok() && !expired {
                    kept = restore(d.into_message());
                }
            });
            kept?;
            if let Some(why) = scanned.torn {
                let dropped = bytes[scanned.end as usize..]
                    .iter()
                    .rposition(|&b| b != 0)
                    .map_or(0, |p| p as u64 + 1);
                recovered.dropped_bytes += dropped;
                log::warn!(
                    "--data-dir {}: {name}: dropped a torn or corrupt record at offset {} ({why}); {count} records before it are kept",
                    dir.display(),
                    scanned.end
                );
                // Cut, so that the next start reads a clean log (and, in
                // the last segment, new records follow the intact ones).
                segment::cut(&segment, scanned.end).map_err(|e| dir_error(config, e))?;
            }
            recovered.messages += count;
            recovered.segments += 1;
            let expired = config
                .retention_age
                .is_some_and(|age| count > 0 && info.newest + age < now);
            if is_last {
                last = Some((segment, scanned.end, info));
            } else if expired || count == 0 {
                // An empty one is the spare of an earlier run: without
                // this, every restart would leave one behind.
                let _ = fs::remove_file(segment::path(dir, number));
            } else {
                sealed.push_back(info);
            }
        }
        let (current, end, open) = match last {
            Some(last) => last,
            None => {
                let segment = Segment::create(dir, 1, config.segment_bytes).map_err(|e| {
                    dir_error(config, format!("cannot make the first segment: {e}"))
                })?;
                (segment, segment::HEADER, writer::Sealed::new(1))
            }
        };
        let shared = Arc::new(writer::Shared::new(
            config.fsync,
            dir.clone(),
            config.segment_bytes,
            &current,
            end,
        ));
        let _ = self.shared.set(shared.clone());
        *self.writer.lock() = Some(writer::Writer {
            shared,
            current,
            position: end,
            sealed,
            open,
            spares: VecDeque::new(),
            retention_age: config.retention_age,
            hub: Weak::new(),
        });
        log::info!(
            "--data-dir {}: {} messages from {} segments read in {:?} (--fsync {})",
            dir.display(),
            recovered.messages,
            recovered.segments,
            started.elapsed(),
            config.fsync.as_str()
        );
        Ok(recovered)
    }

    /// Starts the writer thread; `hub` tells it which segments are still
    /// needed.
    pub fn start(&self, hub: Weak<Hub>) -> Result<(), Error> {
        let Some(mut writer) = self.writer.lock().take() else {
            return Err(Error::Io("the store was not recovered before start".into()));
        };
        writer.hub = hub.clone();
        crate::sys::ignore_file_size_signal();
        let shared = writer.shared.clone();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                // A panic must not leave publishers waiting for ever.
                let run = std::panic::AssertUnwindSafe(|| writer.run());
                if std::panic::catch_unwind(run).is_err() {
                    shared.fail("the writer thread panicked".into());
                }
                // Health turns NOT_SERVING; subscribers are told.
                if let (true, Some(hub)) = (shared.failed(), hub.upgrade()) {
                    hub.serving_changed(crate::hub::Notice {
                        key: "storage_failed",
                        text: "writing to the data directory failed: publishing is stopped \
                               until the server is restarted"
                            .into(),
                    });
                }
            })?;
        *self.thread.lock() = Some(thread);
        Ok(())
    }

    /// Stops accepting messages, writes and syncs what was accepted, and
    /// waits for the writer.
    pub fn close(&self) {
        if let Some(shared) = self.shared.get() {
            shared.stop();
        }
        if let Some(thread) = self.thread.lock().take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

impl Journal for Store {
    fn append(&self, message: &Arc<Message>) -> Result<Ticket, Error> {
        match self.shared.get() {
            Some(shared) => shared.append(message),
            None => Err(Error::Unavailable("the store is not open".into())),
        }
    }

    fn wait(&self, ticket: Ticket) -> Result<(), Error> {
        match self.shared.get() {
            Some(shared) => shared.wait(ticket),
            None => Ok(()),
        }
    }

    fn holds_delivery(&self) -> bool {
        self.config.fsync != Fsync::Never
    }

    fn healthy(&self) -> bool {
        self.shared.get().is_none_or(|shared| !shared.failed())
    }
}

/// A hub with durable rooms in `config.dir`: the directory checked, its
/// messages read back into the rooms, the writer started.
pub fn open_hub(
    hub: crate::hub::HubConfig,
    config: StoreConfig,
) -> Result<(Arc<Hub>, Arc<Store>), Error> {
    let store = Arc::new(Store::open(config)?);
    let journal: Arc<dyn Journal> = store.clone();
    let hub = Arc::new(Hub::with_journal(hub, journal));
    store.recover(|m| hub.restore(m))?;
    store.start(Arc::downgrade(&hub))?;
    Ok((hub, store))
}

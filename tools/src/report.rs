//! How results are shown: a table for people, JSON for machines, and a
//! progress line on stderr while a long run goes on.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// A finished measurement: titled sections of `name  value` rows, and the
/// same figures as JSON (unrounded, in base units).
#[derive(Debug)]
pub struct Report {
    pub title: String,
    pub sections: Vec<(String, Vec<(String, String)>)>,
    pub json: serde_json::Value,
}

impl Report {
    pub fn new(title: impl Into<String>, json: serde_json::Value) -> Report {
        Report {
            title: title.into(),
            sections: Vec::new(),
            json,
        }
    }

    /// Adds a section; rows are `(name, value)`.
    pub fn section(&mut self, name: &str, rows: Vec<(String, String)>) {
        self.sections.push((name.to_string(), rows));
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let width = self
            .sections
            .iter()
            .flat_map(|(_, rows)| rows.iter().map(|(n, _)| n.len()))
            .max()
            .unwrap_or(0);
        let mut out = format!("{}\n", self.title);
        for (name, rows) in &self.sections {
            out.push_str(&format!("\n{name}\n"));
            for (row, value) in rows {
                out.push_str(&format!("  {row:<width$}  {value}\n"));
            }
        }
        out
    }
}

/// `(name, value)` for a table row.
pub fn row(name: &str, value: impl ToString) -> (String, String) {
    (name.to_string(), value.to_string())
}

/// A progress line on stderr: rewritten in place on a terminal, a new line
/// every few seconds otherwise (logs), nothing when quiet.
pub struct Progress {
    enabled: bool,
    terminal: bool,
    started: Instant,
    last: Instant,
    printed: bool,
}

impl Progress {
    pub fn new(enabled: bool) -> Progress {
        let now = Instant::now();
        Progress {
            enabled,
            terminal: std::io::stderr().is_terminal(),
            started: now,
            last: now,
            printed: false,
        }
    }

    /// Shows `line` if it is time to (every second on a terminal, every
    /// five seconds otherwise).
    pub fn tick(&mut self, line: impl FnOnce() -> String) {
        let every = if self.terminal {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(5)
        };
        if !self.enabled || self.last.elapsed() < every {
            return;
        }
        self.last = Instant::now();
        let text = format!(
            "[{:>5.1}s] {}",
            self.started.elapsed().as_secs_f64(),
            line()
        );
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r\x1b[K{text}");
        } else {
            let _ = writeln!(err, "{text}");
        }
        let _ = err.flush();
        self.printed = true;
    }

    /// Ends the line on a terminal.
    pub fn done(&mut self) {
        if self.enabled && self.terminal && self.printed {
            eprintln!();
        }
        self.printed = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_values() {
        let mut r = Report::new("title", serde_json::json!({}));
        r.section("a", vec![row("short", 1), row("much longer", "2 ms")]);
        r.section("b", vec![row("x", "y")]);
        assert_eq!(
            r.table(),
            "title\n\na\n  short        1\n  much longer  2 ms\n\nb\n  x            y\n"
        );
    }
}

//! The agent's recent log lines, kept in memory for the SSH `logs` command: every line
//! written to stderr is also kept in a ring of the last [`KEEP`] lines (the appliance has
//! no disk to log to, and its console is only seen by whoever reads the serial port).

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Mutex;

use tracing_subscriber::fmt::MakeWriter;

/// How many lines are kept (about 100 KiB at typical line lengths).
pub const KEEP: usize = 500;

static RING: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());

/// The kept lines, oldest first, without terminal colour codes.
pub fn recent() -> Vec<String> {
    let ring = RING.lock().unwrap_or_else(|e| e.into_inner());
    ring.iter().cloned().collect()
}

fn keep(bytes: &[u8]) {
    let text = strip_ansi(&String::from_utf8_lossy(bytes));
    let mut ring = RING.lock().unwrap_or_else(|e| e.into_inner());
    for line in text.lines().filter(|l| !l.is_empty()) {
        if ring.len() == KEEP {
            ring.pop_front();
        }
        ring.push_back(line.to_owned());
    }
}

/// Removes `ESC [ ... <letter>` sequences (the colours of an interactive terminal).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A `tracing_subscriber` writer: stderr, and the ring.
pub struct Tee;

impl<'a> MakeWriter<'a> for Tee {
    type Writer = TeeWriter;

    fn make_writer(&'a self) -> TeeWriter {
        TeeWriter
    }
}

/// One event's output (the fmt layer writes each event in one `write`).
pub struct TeeWriter;

impl Write for TeeWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        keep(buf);
        std::io::stderr().write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_last_lines_without_colours() {
        for i in 0..KEEP + 3 {
            keep(format!("\x1b[32m INFO\x1b[0m line {i}\n").as_bytes());
        }
        let lines = recent();
        assert_eq!(lines.len(), KEEP);
        assert_eq!(lines.last().unwrap(), &format!(" INFO line {}", KEEP + 2));
        assert_eq!(lines[0], " INFO line 3");
    }
}

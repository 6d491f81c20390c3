//! The log writer of `opendps serve`: every line is at most `[limits] log_line_max` bytes
//! (docs/limits.md, "Logging"). Fields a client chooses are already cut where they are logged;
//! this is the bound on the whole line. A plain line over it keeps its head and says how long it
//! was; a JSON line over it becomes a short JSON object carrying the head as text, so every line
//! stays valid JSON.

use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;

/// Makes [`Capped`] writers on stderr.
#[derive(Clone, Copy, Debug)]
pub struct CappedStderr {
    pub max: usize,
    pub json: bool,
}

impl<'a> MakeWriter<'a> for CappedStderr {
    type Writer = Capped<io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        Capped { inner: io::stderr(), max: self.max, json: self.json }
    }
}

/// A writer that cuts each line written to it (the subscriber writes one event per call).
#[derive(Debug)]
pub struct Capped<W> {
    pub inner: W,
    pub max: usize,
    pub json: bool,
}

impl<W: Write> Write for Capped<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() <= self.max {
            self.inner.write_all(buf)?;
        } else {
            self.inner.write_all(&cap(buf, self.max, self.json))?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// `line` cut to at most `max` bytes (newline included), on a character boundary.
pub fn cap(line: &[u8], max: usize, json: bool) -> Vec<u8> {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches('\n');
    let mut keep = max.saturating_sub(80);
    loop {
        let head = prefix(text, keep);
        let out = if json {
            let cut = serde_json::json!({
                "level": "WARN",
                "message": "log line cut",
                "bytes": line.len(),
                "head": head,
            });
            format!("{cut}\n")
        } else {
            format!("{head}… [log line of {} bytes cut]\n", line.len())
        };
        if out.len() <= max || keep == 0 {
            return out.into_bytes();
        }
        keep /= 2;
    }
}

/// The longest prefix of `s` of at most `bytes` bytes that ends on a character boundary.
fn prefix(s: &str, bytes: usize) -> &str {
    let mut end = bytes.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(line: &str, max: usize, json: bool) -> String {
        let mut w = Capped { inner: Vec::new(), max, json };
        w.write_all(line.as_bytes()).expect("write");
        String::from_utf8(w.inner).expect("utf-8")
    }

    #[test]
    fn short_lines_pass_unchanged() {
        assert_eq!(written("INFO short\n", 256, false), "INFO short\n");
    }

    #[test]
    fn long_plain_lines_are_cut_on_a_character_boundary() {
        let line = format!("WARN path={}\n", "é".repeat(50_000));
        let out = written(&line, 300, false);
        assert!(out.len() <= 300, "{}", out.len());
        assert!(out.starts_with("WARN path=éé"));
        assert!(out.ends_with(&format!("[log line of {} bytes cut]\n", line.len())));
    }

    #[test]
    fn long_json_lines_stay_valid_json() {
        let line = format!("{}\n", serde_json::json!({ "level": "INFO", "path": "\u{1}\"".repeat(40_000) }));
        let out = written(&line, 256, true);
        assert!(out.len() <= 256, "{}", out.len());
        let v: serde_json::Value = serde_json::from_str(out.trim_end()).expect("valid JSON");
        assert_eq!(v["message"], "log line cut");
        assert_eq!(v["bytes"], line.len());
        assert!(v["head"].as_str().is_some_and(|h| h.starts_with("{\"level\"")));
    }
}

//! Reading the tails of the console log and the VMM's own log.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

/// Bytes read from the end of a file per step when looking for lines.
const CHUNK: u64 = 64 * 1024;

/// Most bytes ever returned for a "last N lines" request (the VMM caps its
/// console log at 16 MiB, so this is the whole log at worst).
const MAX_TAIL_BYTES: u64 = 16 * 1024 * 1024;

/// The text of `path` (lossy UTF-8), or only its last `last_lines` lines.
/// A missing file is empty text.
pub(crate) fn read_tail(path: &Path, last_lines: Option<usize>) -> io::Result<String> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(e),
    };
    let bytes = match last_lines {
        None => {
            let mut all = Vec::new();
            file.read_to_end(&mut all)?;
            all
        }
        Some(0) => Vec::new(),
        Some(n) => tail_bytes(&mut file, n)?,
    };
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The last `n` lines (n > 0) of `file`, read backwards chunk by chunk. A
/// final line without a newline counts as a line; the newline ending the
/// file does not start another.
fn tail_bytes(file: &mut File, n: usize) -> io::Result<Vec<u8>> {
    let len = file.seek(SeekFrom::End(0))?;
    let floor = len.saturating_sub(MAX_TAIL_BYTES);
    let mut start = len;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let from = start.saturating_sub(CHUNK).max(floor);
        let mut chunk = vec![0u8; (start - from) as usize];
        file.seek(SeekFrom::Start(from))?;
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
        start = from;
        if let Some(cut) = cut_for_last_lines(&buf, n) {
            return Ok(buf.split_off(cut));
        }
        if start == floor {
            return Ok(buf);
        }
    }
}

/// Where the last `n` lines of `buf` start, if `buf` holds the newline that
/// ends the line before them.
fn cut_for_last_lines(buf: &[u8], n: usize) -> Option<usize> {
    let body = buf.strip_suffix(b"\n").unwrap_or(buf);
    body.iter()
        .enumerate()
        .rev()
        .filter(|(_, b)| **b == b'\n')
        .nth(n - 1)
        .map(|(i, _)| i + 1)
}

/// The last `max_lines` lines of `log` written after the last line that
/// starts with `marker` (the lines of the latest run), trimmed.
pub(crate) fn log_tail_since(log: &Path, marker: &str, max_lines: usize) -> String {
    // The run's own output is short; 200 lines reach back past its marker.
    let Ok(text) = read_tail(log, Some(200)) else {
        return String::new();
    };
    let since = match text.rfind(marker) {
        Some(i) => match text[i..].find('\n') {
            Some(nl) => &text[i + nl + 1..],
            None => "",
        },
        None => text.as_str(),
    };
    let lines: Vec<&str> = since.lines().collect();
    let first = lines.len().saturating_sub(max_lines);
    lines[first..].join("\n").trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail(text: &[u8], n: Option<usize>) -> String {
        let dir = tempfile::TempDir::new().unwrap();
        let p = dir.path().join("log");
        std::fs::write(&p, text).unwrap();
        read_tail(&p, n).unwrap()
    }

    #[test]
    fn last_lines() {
        assert_eq!(tail(b"a\nb\nc\n", Some(2)), "b\nc\n");
        assert_eq!(tail(b"a\nb\nc", Some(2)), "b\nc");
        assert_eq!(tail(b"a\nb\nc\n", Some(5)), "a\nb\nc\n");
        assert_eq!(tail(b"a\nb\nc\n", Some(0)), "");
        assert_eq!(tail(b"a\nb\nc\n", None), "a\nb\nc\n");
        assert_eq!(tail(b"", Some(3)), "");
        assert_eq!(tail(b"\xffx\n", None), "\u{fffd}x\n");
    }

    #[test]
    fn last_lines_across_chunks() {
        let mut text = Vec::new();
        for i in 0..50_000 {
            text.extend_from_slice(format!("line {i}\n").as_bytes());
        }
        assert_eq!(tail(&text, Some(3)), "line 49997\nline 49998\nline 49999\n");
        let many = tail(&text, Some(20_000));
        assert_eq!(many.lines().count(), 20_000);
        assert!(many.starts_with("line 30000\n"));
    }

    #[test]
    fn missing_file_is_empty() {
        let dir = tempfile::TempDir::new().unwrap();
        assert_eq!(read_tail(&dir.path().join("nope"), Some(3)).unwrap(), "");
        assert_eq!(log_tail_since(&dir.path().join("nope"), "==", 5), "");
    }

    #[test]
    fn log_tail_after_marker() {
        let dir = tempfile::TempDir::new().unwrap();
        let p = dir.path().join("vmm.log");
        std::fs::write(&p, "== run 1\nold error\n== run 2\nnew error\n").unwrap();
        assert_eq!(log_tail_since(&p, "== run", 5), "new error");
    }
}

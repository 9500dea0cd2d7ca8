//! Container logs in the CRI format kubelet reads (`<RFC 3339 time> <stream> <F|P> <text>`),
//! rotated by size.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Lines longer than this are cut into partial (`P`) records, as containerd does.
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Formats whole records from bytes as they arrive, keeping an unfinished line per stream.
#[derive(Default)]
pub struct Framer {
    pending: [Vec<u8>; 2],
}

impl Framer {
    /// Appends `bytes` of `stream` and returns the records now complete, each ending in `\n`.
    pub fn push(&mut self, stream: Stream, bytes: &[u8], time: &str) -> Vec<u8> {
        let pending = &mut self.pending[stream as usize];
        pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            if let Some(end) = pending.iter().position(|&b| b == b'\n') {
                if end <= MAX_LINE {
                    record(&mut out, time, stream, b'F', &pending[..end]);
                    pending.drain(..=end);
                    continue;
                }
            }
            if pending.len() > MAX_LINE {
                record(&mut out, time, stream, b'P', &pending[..MAX_LINE]);
                pending.drain(..MAX_LINE);
                continue;
            }
            return out;
        }
    }

    /// The unfinished lines at the end of the output, as full records.
    pub fn finish(&mut self, time: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for stream in [Stream::Stdout, Stream::Stderr] {
            let pending = std::mem::take(&mut self.pending[stream as usize]);
            if !pending.is_empty() {
                record(&mut out, time, stream, b'F', &pending);
            }
        }
        out
    }
}

fn record(out: &mut Vec<u8>, time: &str, stream: Stream, tag: u8, text: &[u8]) {
    out.extend_from_slice(time.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.name().as_bytes());
    out.push(b' ');
    out.push(tag);
    out.push(b' ');
    out.extend_from_slice(text);
    out.push(b'\n');
}

/// A log file that rotates to `<path>.<n>` when it grows past `max_bytes`, keeping `max_files`
/// files in all (kubelet's `containerLogMaxSize` and `containerLogMaxFiles`).
pub struct RotatingFile {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    max_files: u32,
}

impl RotatingFile {
    pub fn open(path: &Path, max_bytes: u64, max_files: u32) -> std::io::Result<RotatingFile> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_path_buf(),
            file,
            size,
            max_bytes,
            max_files: max_files.max(1),
        })
    }

    pub fn write(&mut self, records: &[u8]) -> std::io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        if self.size > 0 && self.size + records.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(records)?;
        self.size += records.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let numbered = |n: u32| rotated(&self.path, n);
        let _ = fs::remove_file(numbered(self.max_files - 1));
        for n in (1..self.max_files.saturating_sub(1)).rev() {
            let _ = fs::rename(numbered(n), numbered(n + 1));
        }
        if self.max_files > 1 {
            fs::rename(&self.path, numbered(1))?;
        } else {
            fs::remove_file(&self.path)?;
        }
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// The `n`th rotated file of a log (`0.log.1` is the newest).
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    PathBuf::from(format!("{}.{n}", path.display()))
}

/// A log and its rotated files, up to `max_files` in all.
pub fn files(path: &Path, max_files: u32) -> impl Iterator<Item = PathBuf> + '_ {
    std::iter::once(path.to_path_buf()).chain((1..max_files).map(move |n| rotated(path, n)))
}

/// The text of a log, records decoded and partial lines joined (what `kubectl logs` shows).
pub fn read_text(path: &Path) -> std::io::Result<String> {
    let raw = fs::read(path)?;
    let mut text = Vec::new();
    for line in raw.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let mut fields = line.splitn(4, |&b| b == b' ');
        let (_, _, tag, content) = (fields.next(), fields.next(), fields.next(), fields.next());
        text.extend_from_slice(content.unwrap_or_default());
        if tag != Some(b"P") {
            text.push(b'\n');
        }
    }
    Ok(String::from_utf8_lossy(&text).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "2026-11-25T10:00:00.000000001Z";

    #[test]
    fn lines_become_records_and_long_ones_are_split() {
        let mut framer = Framer::default();
        let out = framer.push(Stream::Stdout, b"hello\nwor", T);
        assert_eq!(out, format!("{T} stdout F hello\n").into_bytes());
        let out = framer.push(Stream::Stderr, b"oops\n", T);
        assert_eq!(out, format!("{T} stderr F oops\n").into_bytes());
        let out = framer.push(Stream::Stdout, b"ld\n", T);
        assert_eq!(out, format!("{T} stdout F world\n").into_bytes());

        let long = vec![b'x'; MAX_LINE + 10];
        let out = framer.push(Stream::Stdout, &long, T);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with(&format!("{T} stdout P xxx")));
        assert_eq!(text.len(), T.len() + 10 + MAX_LINE + 1);
        assert_eq!(
            framer.finish(T),
            format!("{T} stdout F {}\n", "x".repeat(10)).into_bytes()
        );
    }

    #[test]
    fn files_rotate_and_keep_their_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut file = RotatingFile::open(&path, 100, 3).unwrap();
        for i in 0..10 {
            file.write(format!("{i:0>60}\n").as_bytes()).unwrap();
        }
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["0.log", "0.log.1", "0.log.2"]);
        assert!(fs::read_to_string(&path).unwrap().ends_with("9\n"));
        assert!(fs::read_to_string(dir.path().join("0.log.1"))
            .unwrap()
            .ends_with("8\n"));
    }

    #[test]
    fn text_joins_partial_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        fs::write(
            &path,
            format!("{T} stdout P ab\n{T} stdout F c\n{T} stderr F d e\n"),
        )
        .unwrap();
        assert_eq!(read_text(&path).unwrap(), "abc\nd e\n");
    }
}

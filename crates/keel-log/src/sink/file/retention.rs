//! Retention of a file sink's rotated files: which names are this sink's, their order (by
//! the parsed stamp and sequence, never by mtime), gzip, and the count / age / total-bytes
//! limits. The live file is never deleted, and neither are another sink's files.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::FileOptions;

/// (stem, extension) of the live file: `app.log` → ("app", "log"), `my.app.log` →
/// ("my.app", "log"); a name without a dot gets the extension `log`.
pub(super) fn split_name(path: &Path) -> (String, String) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "log".into());
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => (stem.to_owned(), ext.to_owned()),
        _ => (name, "log".to_owned()),
    }
}

/// The (stamp, sequence) of `name` when it is a rotated file of the log whose live file has
/// this stem and extension: exactly `<stem>.<yyyymmddTHHMMSS>.<n>.<ext>` or that plus `.gz`.
/// Another sink's files (another extension, a stem that merely starts the same) are `None`.
fn parse_rotated(name: &str, stem: &str, ext: &str) -> Option<(String, u64)> {
    let rest = name.strip_prefix(stem)?.strip_prefix('.')?;
    let rest = rest.strip_suffix(".gz").unwrap_or(rest);
    let rest = rest.strip_suffix(ext)?.strip_suffix('.')?;
    let (stamp, seq) = rest.split_once('.')?;
    let b = stamp.as_bytes();
    let stamp_ok =
        b.len() == 15 && b[8] == b'T' && b[..8].iter().chain(&b[9..]).all(u8::is_ascii_digit);
    let seq_ok = !seq.is_empty() && seq.bytes().all(|c| c.is_ascii_digit());
    (stamp_ok && seq_ok).then(|| (stamp.to_owned(), seq.parse().unwrap_or(u64::MAX)))
}

/// Rotated files of the log at `path` with their (stamp, sequence), oldest first.
fn rotated_with_keys(path: &Path) -> Vec<((String, u64), PathBuf)> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let (stem, ext) = split_name(path);
    let mut files: Vec<((String, u64), PathBuf)> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    parse_rotated(&name, &stem, &ext).map(|key| (key, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    // By the parsed stamp, then the sequence as a number (never by mtime: a clock stepped
    // back, or a copy, changes it).
    files.sort();
    files
}

/// Rotated files of the log at `path`, oldest first: only this sink's names
/// (`<stem>.<yyyymmddTHHMMSS>.<n>.<ext>[.gz]`, stem and extension exact), ordered by stamp
/// then sequence.
pub fn rotated_files(path: &Path) -> Vec<PathBuf> {
    rotated_with_keys(path)
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

/// The newest rotated file's (stamp, sequence), so that a restarted writer names its next
/// file after it.
pub(super) fn newest_rotation(path: &Path) -> Option<(String, u64)> {
    rotated_with_keys(path).pop().map(|(key, _)| key)
}

/// Gzips `path` to `path.gz` and removes `path`. On any failure the partial `.gz` is removed
/// and `path` stays as it was.
pub(super) fn gzip(path: &Path) -> std::io::Result<()> {
    let gz = PathBuf::from(format!("{}.gz", path.display()));
    let mut input = File::open(path)?;
    let out = OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&gz)?;
    let written = (|| {
        let mut encoder =
            flate2::write::GzEncoder::new(BufWriter::new(out), flate2::Compression::default());
        std::io::copy(&mut input, &mut encoder)?;
        let mut inner = encoder.finish()?;
        Write::flush(&mut inner)?;
        inner.get_ref().sync_all()
    })();
    match written {
        Ok(()) => std::fs::remove_file(path),
        Err(e) => {
            let _ = std::fs::remove_file(&gz);
            Err(e)
        }
    }
}

pub(super) fn apply_retention(opts: &FileOptions) {
    let mut files = rotated_files(&opts.path);
    let now = SystemTime::now();
    if let Some(age) = opts.max_age {
        files.retain(|f| {
            let old = std::fs::metadata(f)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|d| d > age);
            if old {
                let _ = std::fs::remove_file(f);
            }
            !old
        });
    }
    if let Some(keep) = opts.keep_files {
        while files.len() > keep {
            let _ = std::fs::remove_file(files.remove(0));
        }
    }
    if let Some(budget) = opts.max_total_bytes {
        let size = |f: &PathBuf| std::fs::metadata(f).map_or(0, |m| m.len());
        let mut total: u64 = files.iter().map(size).sum();
        while total > budget && !files.is_empty() {
            let f = files.remove(0);
            total = total.saturating_sub(size(&f));
            let _ = std::fs::remove_file(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_gzip_leaves_no_partial_archive() {
        let dir = tempfile::tempdir().unwrap();
        // A directory opens but cannot be read (EISDIR): the copy fails midway.
        let rotated = dir.path().join("app.20261122T110000.0.log");
        std::fs::create_dir(&rotated).unwrap();
        assert!(gzip(&rotated).is_err());
        let gz = dir.path().join("app.20261122T110000.0.log.gz");
        assert!(!gz.exists(), "no partial .gz");
        assert!(rotated.exists(), "the original stays");
    }

    #[test]
    fn names() {
        assert_eq!(
            split_name(Path::new("/var/log/app.log")),
            ("app".into(), "log".into())
        );
        assert_eq!(split_name(Path::new("app")), ("app".into(), "log".into()));
    }

    #[test]
    fn only_this_sinks_names_parse() {
        let key = |n: &str| parse_rotated(n, "my.app", "log");
        assert_eq!(
            key("my.app.20261122T110000.3.log"),
            Some(("20261122T110000".into(), 3))
        );
        assert_eq!(
            key("my.app.20261122T110000.12.log.gz"),
            Some(("20261122T110000".into(), 12))
        );
        assert_eq!(key("my.app.20261122T110000.3.json"), None);
        assert_eq!(key("my.app.log"), None);
        assert_eq!(key("my.app.x.20261122T110000.3.log"), None);
        assert_eq!(key("my.app.2026112T110000.3.log"), None);
    }
}

//! Retention of a file sink's rotated files: which names are this sink's, their order (by
//! the parsed stamp and sequence, never by mtime), gzip, and the count / age / total-bytes
//! limits. The live file is never deleted, and neither are another sink's files.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::FileOptions;

/// (stem, extension) of the live file: `app.log` → ("app", Some("log")), `my.app.log` →
/// ("my.app", Some("log")); a name without a dot (`app`, `.hidden`) has no extension, and its
/// rotated files are `<stem>.<stamp>.<n>`, so they never look like those of `app.log`.
pub(super) fn split_name(path: &Path) -> (String, Option<String>) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "log".into());
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => (stem.to_owned(), Some(ext.to_owned())),
        _ => (name, None),
    }
}

/// The rotated name `<stem>.<stamp>.<n>[.<ext>]`.
pub(super) fn rotated_name(stem: &str, stamp: &str, n: u64, ext: Option<&str>) -> String {
    match ext {
        Some(ext) => format!("{stem}.{stamp}.{n}.{ext}"),
        None => format!("{stem}.{stamp}.{n}"),
    }
}

/// The (stamp, sequence) of `name` when it is a rotated file of the log whose live file has
/// this stem and extension: exactly `<stem>.<yyyymmddTHHMMSS>.<n>[.<ext>]` or that plus `.gz`.
/// Another sink's files (another extension or none, a stem that merely starts the same) are
/// `None`.
fn parse_rotated(name: &str, stem: &str, ext: Option<&str>) -> Option<(String, u64)> {
    let rest = name.strip_prefix(stem)?.strip_prefix('.')?;
    let rest = rest.strip_suffix(".gz").unwrap_or(rest);
    let rest = match ext {
        Some(ext) => rest.strip_suffix(ext)?.strip_suffix('.')?,
        None => rest,
    };
    let (stamp, seq) = rest.split_once('.')?;
    let b = stamp.as_bytes();
    let stamp_ok =
        b.len() == 15 && b[8] == b'T' && b[..8].iter().chain(&b[9..]).all(u8::is_ascii_digit);
    let seq_ok = !seq.is_empty() && seq.bytes().all(|c| c.is_ascii_digit());
    (stamp_ok && seq_ok).then(|| (stamp.to_owned(), seq.parse().unwrap_or(u64::MAX)))
}

/// The directory of the live file.
fn dir_of(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Every file of this sink's rotated names in the directory, with its (stamp, sequence) and
/// file name; `.gz.tmp` files (a gzip in progress or interrupted) are listed only with `tmp`.
fn own_files(path: &Path, tmp: bool) -> Vec<((String, u64), PathBuf)> {
    let (stem, ext) = split_name(path);
    std::fs::read_dir(dir_of(path))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let name = if tmp {
                        name.strip_suffix(".gz.tmp")?.to_owned() + ".gz"
                    } else {
                        name
                    };
                    parse_rotated(&name, &stem, ext.as_deref()).map(|key| (key, e.path()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Rotated files of the log at `path` with their (stamp, sequence), oldest first. A plain
/// file and its `.gz` (a gzip that finished but had not removed the plain file yet) are one
/// entry, the plain file.
fn rotated_with_keys(path: &Path) -> Vec<((String, u64), PathBuf)> {
    let mut files = own_files(path, false);
    // By the parsed stamp, then the sequence as a number (never by mtime: a clock stepped
    // back, or a copy, changes it); `X` sorts before `X.gz`.
    files.sort();
    files.dedup_by(|later, first| later.0 == first.0);
    files
}

/// Rotated files of the log at `path`, oldest first: only this sink's names
/// (`<stem>.<yyyymmddTHHMMSS>.<n>.<ext>[.gz]`, or `<stem>.<stamp>.<n>[.gz]` for a live file
/// without an extension; stem and extension exact), ordered by stamp then sequence. A plain
/// file and its `.gz` count as one file (the plain one).
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

/// The `.gz` of a rotated file.
fn gz_of(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".gz");
    PathBuf::from(name)
}

/// Cleans up after a process that was killed while it gzipped: removes this sink's `.gz.tmp`
/// files, and the `.gz` of a plain file that is still there (the plain file is whole; the
/// archive may not be, if an older version wrote it in place). Returns the plain rotated
/// files, for a sink that compresses to gzip them now.
pub(super) fn recover(path: &Path) -> Vec<PathBuf> {
    for (_, tmp) in own_files(path, true) {
        let _ = std::fs::remove_file(tmp);
    }
    let plain: Vec<PathBuf> = rotated_files(path)
        .into_iter()
        .filter(|f| f.extension().is_none_or(|e| e != "gz"))
        .collect();
    for f in &plain {
        let gz = gz_of(f);
        if gz.exists() {
            let _ = std::fs::remove_file(gz);
        }
    }
    plain
}

/// Gzips `path` to `path.gz` and removes `path`: written to `path.gz.tmp`, synced, then
/// renamed, so a `.gz` is always whole. On any failure the temporary file is removed and
/// `path` stays as it was.
pub(super) fn gzip(path: &Path) -> std::io::Result<()> {
    let gz = gz_of(path);
    let mut tmp = gz.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let written = (|| {
        let mut input = File::open(path)?;
        let out = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut encoder =
            flate2::write::GzEncoder::new(BufWriter::new(out), flate2::Compression::default());
        std::io::copy(&mut input, &mut encoder)?;
        let mut inner = encoder.finish()?;
        Write::flush(&mut inner)?;
        inner.get_ref().sync_all()?;
        std::fs::rename(&tmp, &gz)
    })();
    match written {
        Ok(()) => std::fs::remove_file(path),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Removes a rotated file, and its `.gz` when it is the plain one of a pair.
fn remove_rotated(path: &Path) {
    let _ = std::fs::remove_file(path);
    if path.extension().is_none_or(|e| e != "gz") {
        let _ = std::fs::remove_file(gz_of(path));
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
                remove_rotated(f);
            }
            !old
        });
    }
    if let Some(keep) = opts.keep_files {
        while files.len() > keep {
            remove_rotated(&files.remove(0));
        }
    }
    if let Some(budget) = opts.max_total_bytes {
        let size = |f: &PathBuf| std::fs::metadata(f).map_or(0, |m| m.len());
        let mut total: u64 = files.iter().map(size).sum();
        while total > budget && !files.is_empty() {
            let f = files.remove(0);
            total = total.saturating_sub(size(&f));
            remove_rotated(&f);
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
        assert!(!dir.path().join("app.20261122T110000.0.log.gz.tmp").exists());
        assert!(rotated.exists(), "the original stays");
    }

    #[test]
    fn names() {
        assert_eq!(
            split_name(Path::new("/var/log/app.log")),
            ("app".into(), Some("log".into()))
        );
        assert_eq!(split_name(Path::new("app")), ("app".into(), None));
        assert_eq!(split_name(Path::new(".hidden")), (".hidden".into(), None));
    }

    #[test]
    fn a_name_without_an_extension_has_names_of_its_own() {
        let bare = |n: &str| parse_rotated(n, "app", None);
        let log = |n: &str| parse_rotated(n, "app", Some("log"));
        assert_eq!(
            bare("app.20261122T110000.3"),
            Some(("20261122T110000".into(), 3))
        );
        assert_eq!(
            bare("app.20261122T110000.3.gz"),
            Some(("20261122T110000".into(), 3))
        );
        assert_eq!(bare("app.20261122T110000.3.log"), None);
        assert_eq!(bare("app.20261122T110000.3.log.gz"), None);
        assert_eq!(log("app.20261122T110000.3"), None);
        assert_eq!(log("app.20261122T110000.3.gz"), None);
    }

    #[test]
    fn a_plain_file_and_its_gz_are_one_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("app.log");
        for name in [
            "app.20261122T110000.0.log",
            "app.20261122T110000.0.log.gz",
            "app.20261122T110000.1.log.gz",
            "app.20261122T110000.2.log.gz.tmp",
        ] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        assert_eq!(rotated_files(&live).len(), 2);
        let mut opts = FileOptions::new(&live);
        opts.keep_files = Some(1);
        apply_retention(&opts);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "app.20261122T110000.1.log.gz",
                "app.20261122T110000.2.log.gz.tmp"
            ],
            "the oldest went as a whole, plain file and archive"
        );
    }

    #[test]
    fn only_this_sinks_names_parse() {
        let key = |n: &str| parse_rotated(n, "my.app", Some("log"));
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

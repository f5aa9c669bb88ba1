//! The file sink's writer: rotation by size and/or time, unique rotated names, retention,
//! background gzip, `reopen` for external logrotate, private permissions.
//!
//! Rotated files are named `<stem>.<UTC yyyymmddTHHMMSS>.<n>.<ext>` next to the live file,
//! where `n` makes the name unique even for many rotations in one second (an existing name is
//! never overwritten). With compression on, a background thread gzips each rotated file to
//! `….gz` and removes the plain one. Retention (count, age, total bytes) runs after each
//! rotation over the rotated files of this log only; the live file is never deleted.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::sink::RecordWriter;

/// Time-based rotation (boundaries in UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// At every full hour.
    Hourly,
    /// At midnight.
    Daily,
}

impl Period {
    fn seconds(self) -> u64 {
        match self {
            Period::Hourly => 3600,
            Period::Daily => 86_400,
        }
    }
}

/// File sink settings.
#[derive(Debug, Clone)]
pub struct FileOptions {
    /// The live log file.
    pub path: PathBuf,
    /// Rotate before a write would take the file past this size.
    pub max_bytes: Option<u64>,
    /// Rotate at hour or day boundaries (UTC).
    pub period: Option<Period>,
    /// Keep at most this many rotated files.
    pub keep_files: Option<usize>,
    /// Delete rotated files older than this.
    pub max_age: Option<Duration>,
    /// Keep rotated files within this many bytes in total.
    pub max_total_bytes: Option<u64>,
    /// Gzip rotated files on a background thread.
    pub compress: bool,
}

impl FileOptions {
    /// A file at `path`, no rotation, no retention, no compression.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            max_bytes: None,
            period: None,
            keep_files: None,
            max_age: None,
            max_total_bytes: None,
            compress: false,
        }
    }
}

/// Asks a running [`FileWriter`] to close and reopen its path at the next write (after an
/// external tool renamed it). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ReopenHandle(Arc<AtomicBool>);

impl ReopenHandle {
    /// Requests the reopen.
    pub fn reopen(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Writes records to a rotating file (used by the file sink's writer thread).
pub struct FileWriter {
    opts: FileOptions,
    file: BufWriter<File>,
    size: u64,
    period_index: u64,
    reopen: ReopenHandle,
    compressor: Option<crossbeam_channel::Sender<PathBuf>>,
    /// The last rotated name's stamp and sequence: sequences only go up within a second,
    /// even when retention has deleted the earlier files (reusing a freed number would sort a
    /// newer file before older ones).
    last_rotation: Option<(String, u64)>,
}

impl std::fmt::Debug for FileWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWriter")
            .field("path", &self.opts.path)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn open(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// `yyyymmddTHHMMSS` in UTC, from Unix seconds (civil-from-days, Howard Hinnant).
fn utc_stamp(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// (stem, extension) of the live file: `app.log` → ("app", "log").
fn split_name(path: &Path) -> (String, String) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "log".into());
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => (stem.to_owned(), ext.to_owned()),
        _ => (name, "log".to_owned()),
    }
}

/// Rotated files of the log at `path`, oldest first.
pub fn rotated_files(path: &Path) -> Vec<PathBuf> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let (stem, _) = split_name(path);
    let prefix = format!("{stem}.");
    let live = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let mut files: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let rest = name.strip_prefix(&prefix)?;
                    // `<stamp>.<n>.<ext>[.gz]`: the stamp starts with a digit.
                    (Some(&name) != live.as_ref() && rest.starts_with(|c: char| c.is_ascii_digit()))
                        .then(|| (name.clone(), e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    // Names sort by stamp then sequence; pad-free sequences need a numeric key.
    files.sort_by_key(|(name, _)| {
        let mut parts = name.split('.');
        let _stem = parts.next();
        let stamp = parts.next().unwrap_or_default().to_owned();
        let seq: u64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        (stamp, seq)
    });
    files.into_iter().map(|(_, p)| p).collect()
}

fn gzip(path: &Path) -> std::io::Result<()> {
    let gz = PathBuf::from(format!("{}.gz", path.display()));
    let mut input = File::open(path)?;
    let out = OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&gz)?;
    let mut encoder =
        flate2::write::GzEncoder::new(BufWriter::new(out), flate2::Compression::default());
    std::io::copy(&mut input, &mut encoder)?;
    Write::flush(&mut encoder.finish()?)?;
    std::fs::remove_file(path)
}

fn apply_retention(opts: &FileOptions) {
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

impl FileWriter {
    /// Opens (creating with mode 0600, parents 0700) the live file.
    ///
    /// # Errors
    /// The file or directory cannot be created.
    pub fn open(opts: FileOptions) -> std::io::Result<(Self, ReopenHandle)> {
        let file = open(&opts.path)?;
        let size = file.metadata()?.len();
        let compressor = if opts.compress
            || opts.keep_files.is_some()
            || opts.max_age.is_some()
            || opts.max_total_bytes.is_some()
        {
            let (tx, rx) = crossbeam_channel::unbounded::<PathBuf>();
            let o = opts.clone();
            std::thread::Builder::new()
                .name("keel-log-rotate".into())
                .spawn(move || {
                    for rotated in rx {
                        if o.compress {
                            let _ = gzip(&rotated);
                        }
                        apply_retention(&o);
                    }
                })?;
            Some(tx)
        } else {
            None
        };
        let reopen = ReopenHandle::default();
        let period_index = opts.period.map_or(0, |p| now_secs() / p.seconds());
        Ok((
            Self {
                opts,
                file: BufWriter::with_capacity(64 * 1024, file),
                size,
                period_index,
                reopen: reopen.clone(),
                compressor,
                last_rotation: None,
            },
            reopen,
        ))
    }

    fn rotated_name(&mut self) -> PathBuf {
        let (stem, ext) = split_name(&self.opts.path);
        let dir = self
            .opts
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned();
        let stamp = utc_stamp(now_secs());
        let mut n = match &self.last_rotation {
            Some((last, seq)) if *last == stamp => seq + 1,
            _ => 0,
        };
        loop {
            let candidate = dir.join(format!("{stem}.{stamp}.{n}.{ext}"));
            let gz = PathBuf::from(format!("{}.gz", candidate.display()));
            if !candidate.exists() && !gz.exists() {
                self.last_rotation = Some((stamp, n));
                return candidate;
            }
            n += 1;
        }
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        Write::flush(&mut self.file)?;
        let target = self.rotated_name();
        std::fs::rename(&self.opts.path, &target)?;
        self.file = BufWriter::with_capacity(64 * 1024, open(&self.opts.path)?);
        self.size = 0;
        if let Some(tx) = &self.compressor {
            let _ = tx.send(target);
        }
        Ok(())
    }

    fn due(&mut self, incoming: u64) -> bool {
        let by_size = self
            .opts
            .max_bytes
            .is_some_and(|max| self.size > 0 && self.size + incoming > max);
        let by_time = match self.opts.period {
            Some(p) => {
                let index = now_secs() / p.seconds();
                if index != self.period_index {
                    self.period_index = index;
                    self.size > 0
                } else {
                    false
                }
            }
            None => false,
        };
        by_size || by_time
    }
}

impl RecordWriter for FileWriter {
    fn write_record(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.reopen.0.swap(false, Ordering::AcqRel) {
            Write::flush(&mut self.file)?;
            let file = open(&self.opts.path)?;
            self.size = file.metadata()?.len();
            self.file = BufWriter::with_capacity(64 * 1024, file);
        }
        if self.due(bytes.len() as u64) {
            self.rotate()?;
        }
        self.file.write_all(bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Write::flush(&mut self.file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(0), "19700101T000000");
        assert_eq!(utc_stamp(1_795_391_999), "20261122T235959");
        assert_eq!(utc_stamp(951_782_400), "20000229T000000");
    }

    #[test]
    fn names() {
        assert_eq!(
            split_name(Path::new("/var/log/app.log")),
            ("app".into(), "log".into())
        );
        assert_eq!(split_name(Path::new("app")), ("app".into(), "log".into()));
    }
}

/// A file sink: a [`QueueSink`](crate::QueueSink) whose writer is a rotating [`FileWriter`].
#[derive(Debug)]
pub struct FileSink {
    queue: crate::sink::QueueSink,
    reopen: ReopenHandle,
}

impl FileSink {
    /// Opens the file and starts the writer thread.
    ///
    /// # Errors
    /// The file cannot be created, or the thread cannot start.
    pub fn start(
        name: impl Into<String>,
        options: FileOptions,
        capacity: usize,
        policy: crate::sink::Overflow,
        format: Box<dyn crate::format::Format>,
    ) -> std::io::Result<Self> {
        let (writer, reopen) = FileWriter::open(options)?;
        let queue = crate::sink::QueueSink::start(name, capacity, policy, format, writer)?;
        Ok(Self { queue, reopen })
    }

    /// Reopens the path before the next write (after an external rename, e.g. logrotate).
    pub fn reopen(&self) {
        self.reopen.reopen();
    }

    /// A handle that can request reopens from elsewhere (a SIGHUP handler).
    pub fn reopen_handle(&self) -> ReopenHandle {
        self.reopen.clone()
    }
}

impl crate::sink::Sink for FileSink {
    fn name(&self) -> &str {
        self.queue.name()
    }

    fn write(&self, record: Arc<crate::record::Record>) {
        self.queue.write(record);
    }

    fn flush(&self, timeout: Duration) -> crate::sink::DeliveryStats {
        self.queue.flush(timeout)
    }

    fn shutdown(&self, timeout: Duration) -> crate::sink::DeliveryStats {
        self.queue.shutdown(timeout)
    }
}

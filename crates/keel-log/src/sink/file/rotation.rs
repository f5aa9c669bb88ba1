//! The file sink's writer: rotation by size and/or time at the zone's boundaries, unique
//! rotated names that always sort after the newest existing one, a buffer flushed by the
//! sink's policy, and recovery (a deleted file recreated, failed opens and rotations retried
//! with backoff, a truncated file written from its new end).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jiff::{RoundMode, Timestamp, ToSpan, Unit, ZonedRound};
use prometheus_client::metrics::counter::Counter;

use super::retention::{apply_retention, gzip, newest_rotation, recover, rotated_name, split_name};
use super::zone::{Zone, unix_secs};
use super::{FileOptions, ReopenHandle};
use crate::sink::RecordWriter;

/// Time-based rotation, at boundaries of the sink's [`Zone`] clock.
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

    /// The first hour or day boundary after `now` on `zone`'s clock.
    ///
    /// Hours are physical: in a daylight-saving fall-back the repeated hour gets its own
    /// boundary, and in a spring-forward gap the next boundary is the first hour that exists.
    /// Days start at local midnight (or the first instant of the day where midnight does not
    /// exist), so a local day may be 23 or 25 hours long. In a zone with a non-whole-hour
    /// offset (Asia/Kolkata, +05:30) the hourly boundaries fall at half past the UTC hour.
    pub fn next_boundary(self, now: SystemTime, zone: &Zone) -> SystemTime {
        let secs = unix_secs(now);
        let fallback =
            || UNIX_EPOCH + Duration::from_secs((secs / self.seconds() + 1) * self.seconds());
        let Ok(ts) = Timestamp::from_second(i64::try_from(secs).unwrap_or(i64::MAX)) else {
            return fallback();
        };
        let here = ts.to_zoned(zone.tz.clone());
        let next = match self {
            Period::Hourly => here
                .round(
                    ZonedRound::new()
                        .smallest(Unit::Hour)
                        .mode(RoundMode::Trunc),
                )
                .and_then(|hour| hour.checked_add(1.hour())),
            Period::Daily => here.tomorrow().and_then(|day| day.start_of_day()),
        };
        match next.map(|z| z.timestamp().as_second()) {
            Ok(s) if s > 0 => UNIX_EPOCH + Duration::from_secs(s.unsigned_abs()),
            _ => fallback(),
        }
    }
}

/// The writer's buffer: flushed when full, when the sink's queue drains, and at least every
/// flush interval.
const BUFFER: usize = 64 * 1024;
/// The first wait before a failed open or rotation is tried again; it doubles up to
/// `RETRY_MAX`.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// When a failed operation may be tried again.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    at: Instant,
    delay: Duration,
}

impl Backoff {
    fn after(previous: Option<Backoff>) -> Self {
        let delay = previous.map_or(RETRY_FIRST, |b| (b.delay * 2).min(RETRY_MAX));
        Self {
            at: Instant::now() + delay,
            delay,
        }
    }

    fn due(this: Option<Backoff>) -> bool {
        this.is_none_or(|b| Instant::now() >= b.at)
    }
}

/// Writes records to a rotating file (used by the file sink's writer thread).
///
/// Failures never wedge it: when the live file has been deleted (`rm`, `rm -r` of its
/// directory) it is recreated, directory included, before the next bytes are written; when an
/// open fails (EACCES, ENOSPC, a missing parent that cannot be created) the records fail and
/// the open is retried with backoff (0.1 s doubling to 5 s) at later writes; when a rotation's
/// rename fails, writing goes on in the live file and the rotation is retried with the same
/// backoff. A file truncated under it (logrotate `copytruncate`) is written from its new end:
/// the file is opened in append mode, so there is no hole of NUL bytes.
pub struct FileWriter {
    opts: FileOptions,
    /// `None` after a failed open, until a retry succeeds.
    file: Option<File>,
    /// Bytes accepted and not yet written to `file`.
    buf: Vec<u8>,
    /// The live file's size including `buf`.
    size: u64,
    /// When the current period ends (time-based rotation only).
    next_boundary: Option<SystemTime>,
    /// A period ended and its rotation has not succeeded yet (it waits for the retry timer,
    /// or failed): cleared only by a successful rotation.
    time_due: bool,
    /// The time source (replaced in tests to cross boundaries on demand).
    clock: fn() -> SystemTime,
    reopen: ReopenHandle,
    compressor: Option<crossbeam_channel::Sender<PathBuf>>,
    /// Disconnected when the compressor thread has finished its work and exited.
    compressor_done: Option<crossbeam_channel::Receiver<()>>,
    /// Failed rotations (`<ns>_log_rotation_errors_total{sink}` once the sink names it).
    rotation_errors: Counter,
    /// The newest rotated name's stamp and sequence (also from files an earlier process
    /// rotated): a new name always sorts after it, even when the clock has been stepped back,
    /// and sequences only go up within a second even when retention has deleted the earlier
    /// files (reusing a freed number would sort a newer file before older ones).
    last_rotation: Option<(String, u64)>,
    /// Set after a failed open: when to try again.
    open_retry: Option<Backoff>,
    /// Set after a failed rotation: when to try again.
    rotate_retry: Option<Backoff>,
}

impl std::fmt::Debug for FileWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWriter")
            .field("path", &self.opts.path)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
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

impl FileWriter {
    /// Opens (creating with mode 0600, parents 0700) the live file.
    ///
    /// # Errors
    /// The file or directory cannot be created.
    pub fn open(opts: FileOptions) -> std::io::Result<(Self, ReopenHandle)> {
        Self::open_with_clock(opts, SystemTime::now)
    }

    fn open_with_clock(
        opts: FileOptions,
        clock: fn() -> SystemTime,
    ) -> std::io::Result<(Self, ReopenHandle)> {
        let file = open(&opts.path)?;
        let size = file.metadata()?.len();
        // A process killed while it gzipped left a temporary file, or a plain file and its
        // archive: clean up, and gzip what it left plain.
        let leftover = recover(&opts.path);
        let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
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
                    let _done = done_tx;
                    for rotated in rx {
                        if o.compress {
                            let _ = gzip(&rotated);
                        }
                        apply_retention(&o);
                    }
                })?;
            if opts.compress {
                for plain in leftover {
                    let _ = tx.send(plain);
                }
            }
            Some(tx)
        } else {
            None
        };
        let reopen = ReopenHandle::default();
        let next_boundary = opts.period.map(|p| p.next_boundary(clock(), &opts.zone));
        let last_rotation = newest_rotation(&opts.path);
        Ok((
            Self {
                opts,
                file: Some(file),
                buf: Vec::with_capacity(BUFFER),
                size,
                next_boundary,
                time_due: false,
                clock,
                reopen: reopen.clone(),
                compressor,
                compressor_done: Some(done_rx),
                rotation_errors: Counter::default(),
                last_rotation,
                open_retry: None,
                rotate_retry: None,
            },
            reopen,
        ))
    }

    /// Counts failed rotations in `<ns>_log_rotation_errors_total{sink}` (global registry).
    pub(crate) fn count_rotation_errors_as(&mut self, sink: &str) {
        self.rotation_errors = crate::sink::sink_counter(
            "log_rotation_errors",
            "File rotations that failed (retried with backoff; the records go on to the live file)",
            sink,
        );
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
        let mut stamp = self.opts.zone.stamp((self.clock)());
        let mut n = 0;
        if let Some((last, seq)) = &self.last_rotation
            && *last >= stamp
        {
            // Same second, or a clock stepped back: keep sorting after the newest file.
            stamp.clone_from(last);
            n = seq + 1;
        }
        loop {
            let candidate = dir.join(rotated_name(&stem, &stamp, n, ext.as_deref()));
            let gz = PathBuf::from(format!("{}.gz", candidate.display()));
            if !candidate.exists() && !gz.exists() {
                self.last_rotation = Some((stamp, n));
                return candidate;
            }
            n += 1;
        }
    }

    /// Opens the live file if it is not open, unless a retry is not due yet.
    fn ensure_open(&mut self) -> std::io::Result<&mut File> {
        if self.file.is_none() {
            if !Backoff::due(self.open_retry) {
                return Err(std::io::Error::other(format!(
                    "{} could not be opened; retrying with backoff",
                    self.opts.path.display()
                )));
            }
            match open(&self.opts.path).and_then(|f| f.metadata().map(|m| (f, m.len()))) {
                Ok((file, len)) => {
                    self.file = Some(file);
                    self.size = len + self.buf.len() as u64;
                    self.open_retry = None;
                }
                Err(e) => {
                    self.open_retry = Some(Backoff::after(self.open_retry));
                    return Err(e);
                }
            }
        }
        Ok(self.file.as_mut().expect("opened above"))
    }

    /// Writes the buffer to the live file. A deleted live file (or directory) is recreated
    /// first; a truncated one (copytruncate) is written from its new end. On an error the
    /// bytes not yet written stay buffered.
    fn write_out(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Some(file) = &self.file {
            match file.metadata() {
                // Unlinked (`rm`, `rm -r`): bytes written there would be lost.
                Ok(m) if m.nlink() == 0 => self.file = None,
                // Truncated under us: appends go to its new end.
                Ok(m) => self.size = m.len() + self.buf.len() as u64,
                Err(_) => self.file = None,
            }
        }
        self.ensure_open()?;
        let (Some(file), buf) = (&mut self.file, &self.buf) else {
            unreachable!("ensure_open succeeded");
        };
        let mut done = 0;
        let result = loop {
            if done == buf.len() {
                break Ok(());
            }
            match file.write(&buf[done..]) {
                Ok(0) => break Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.buf.drain(..done);
        result
    }

    /// With `sync`, makes what was written to the current file durable before it is renamed
    /// or closed (the next flush syncs only the new file).
    fn sync_before_leaving(&mut self) -> std::io::Result<()> {
        match &self.file {
            Some(file) if self.opts.flush.sync => file.sync_data(),
            _ => Ok(()),
        }
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        // What is buffered belongs to the file being rotated.
        self.write_out()?;
        self.sync_before_leaving()?;
        if self
            .file
            .as_ref()
            .is_none_or(|f| f.metadata().map_or(true, |m| m.nlink() == 0))
        {
            // The live file is gone (`rm`, logrotate `nocreate`): nothing to rename, start a
            // fresh one.
            self.file = None;
            self.size = self.buf.len() as u64;
            self.open_retry = None;
            return self.ensure_open().map(|_| ());
        }
        let target = self.rotated_name();
        std::fs::rename(&self.opts.path, &target)?;
        self.file = None;
        self.size = 0;
        self.open_retry = None;
        if let Some(tx) = &self.compressor {
            let _ = tx.send(target);
        }
        self.ensure_open().map(|_| ())
    }

    fn due(&mut self, incoming: u64) -> bool {
        let by_size = self
            .opts
            .max_bytes
            .is_some_and(|max| self.size > 0 && self.size + incoming > max);
        let by_time = match (self.opts.period, self.next_boundary) {
            (Some(p), Some(boundary)) => {
                let now = (self.clock)();
                if now >= boundary {
                    self.next_boundary = Some(p.next_boundary(now, &self.opts.zone));
                    self.time_due |= self.size > 0;
                }
                self.time_due
            }
            _ => false,
        };
        (by_size || by_time) && Backoff::due(self.rotate_retry)
    }
}

impl RecordWriter for FileWriter {
    fn write_record(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.reopen.0.swap(false, Ordering::AcqRel) {
            // Buffered bytes still go to the file they were meant for (if it is writable).
            let _ = self.write_out().and_then(|()| self.sync_before_leaving());
            self.file = None;
            self.open_retry = None;
        }
        self.ensure_open()?;
        if self.due(bytes.len() as u64) {
            let rotated = self.rotate();
            if rotated.is_err() {
                self.rotation_errors.inc();
            }
            match rotated {
                Ok(()) => {
                    self.rotate_retry = None;
                    self.time_due = false;
                }
                // The rename failed: keep writing to the live file, rotate later.
                Err(e) if self.file.is_some() => {
                    if self.rotate_retry.is_none() {
                        eprintln!(
                            "keel-log: cannot rotate {}: {e}; writing on and retrying",
                            self.opts.path.display()
                        );
                    }
                    self.rotate_retry = Some(Backoff::after(self.rotate_retry));
                }
                Err(e) => return Err(e),
            }
        }
        if self.buf.len() + bytes.len() > BUFFER {
            self.write_out()?;
        }
        self.buf.extend_from_slice(bytes);
        self.size += bytes.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let result = self.write_out();
        if result.is_err() {
            // Counted as failed by the sink: never written later as well.
            self.size = self.size.saturating_sub(self.buf.len() as u64);
            self.buf.clear();
        }
        result
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.flush()?;
        match &self.file {
            Some(file) => file.sync_data(),
            None => Ok(()),
        }
    }

    /// Lets the compressor finish the files it was given (gzip of the last rotated file,
    /// retention), waiting at most until `deadline`; an unfinished gzip leaves only its
    /// `.gz.tmp`, removed at the next start.
    fn close(&mut self, deadline: Instant) {
        self.compressor = None;
        if let Some(done) = self.compressor_done.take() {
            let _ = done.recv_deadline(deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rotated_files;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// Unix seconds of a civil time in `zone`.
    fn civil(zone: &str, y: i16, mo: i8, d: i8, h: i8, mi: i8) -> u64 {
        jiff::civil::date(y, mo, d)
            .at(h, mi, 0, 0)
            .in_tz(zone)
            .unwrap()
            .timestamp()
            .as_second()
            .unsigned_abs()
    }

    #[test]
    fn utc_boundaries_are_whole_hours_and_midnights() {
        let utc = Zone::utc();
        // 2026-11-22T23:59:59Z
        let now = at(1_795_391_999);
        assert_eq!(Period::Hourly.next_boundary(now, &utc), at(1_795_392_000));
        assert_eq!(Period::Daily.next_boundary(now, &utc), at(1_795_392_000));
        // Exactly on a boundary: the next one, not the same instant.
        let on = at(1_795_392_000);
        assert_eq!(Period::Hourly.next_boundary(on, &utc), at(1_795_395_600));
        assert_eq!(Period::Daily.next_boundary(on, &utc), at(1_795_478_400));
    }

    #[test]
    fn kolkata_boundaries_fall_on_its_half_hour_offset() {
        let ist = Zone::named("Asia/Kolkata").unwrap();
        // 10:17 IST = 04:47 UTC: the next IST hour is 11:00 IST = 05:30 UTC, not 05:00 UTC.
        let now = at(civil("Asia/Kolkata", 2026, 11, 22, 10, 17));
        assert_eq!(
            Period::Hourly.next_boundary(now, &ist),
            at(civil("UTC", 2026, 11, 22, 5, 30))
        );
        // 23:50 UTC on the 22nd is already 05:20 IST on the 23rd: next midnight IST is
        // the 24th 00:00 IST = 18:30 UTC on the 23rd.
        let late = at(civil("UTC", 2026, 11, 22, 23, 50));
        assert_eq!(
            Period::Daily.next_boundary(late, &ist),
            at(civil("UTC", 2026, 11, 23, 18, 30))
        );
        assert_eq!(
            Period::Daily.next_boundary(late, &Zone::utc()),
            at(civil("UTC", 2026, 11, 23, 0, 0))
        );
    }

    #[test]
    fn dst_days_and_hours_follow_the_local_clock() {
        let ny = Zone::named("America/New_York").unwrap();
        // 2026-11-01 is a 25-hour day in New York: midnight to midnight is 25 h.
        let start = civil("America/New_York", 2026, 11, 1, 0, 0);
        assert_eq!(
            Period::Daily.next_boundary(at(start + 60), &ny),
            at(start + 25 * 3600)
        );
        // The repeated 01:00 hour gets its own boundary (01:00 EDT → 01:00 EST → 02:00 EST).
        let first_one = civil("America/New_York", 2026, 11, 1, 1, 0);
        assert_eq!(
            Period::Hourly.next_boundary(at(first_one + 60), &ny),
            at(first_one + 3600)
        );
        assert_eq!(
            Period::Hourly.next_boundary(at(first_one + 3600 + 60), &ny),
            at(first_one + 2 * 3600)
        );
    }

    static FAKE_NOW: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    fn fake_clock() -> SystemTime {
        at(FAKE_NOW.load(Ordering::SeqCst))
    }

    static BLOCKED_NOW: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    fn blocked_clock() -> SystemTime {
        at(BLOCKED_NOW.load(Ordering::SeqCst))
    }

    #[test]
    fn a_time_rotation_held_back_by_the_retry_timer_happens_once_it_is_due() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("app.log");
        let mut opts = FileOptions::new(&live);
        opts.period = Some(Period::Hourly);
        BLOCKED_NOW.store(civil("UTC", 2026, 11, 22, 4, 59) + 59, Ordering::SeqCst);
        let (mut w, _) = FileWriter::open_with_clock(opts, blocked_clock).unwrap();
        w.write_record(b"one\n").unwrap();
        // An earlier rotation failed: the next try is not due yet when the hour ends.
        w.rotate_retry = Some(Backoff {
            at: Instant::now() + Duration::from_secs(3600),
            delay: RETRY_MAX,
        });
        BLOCKED_NOW.store(civil("UTC", 2026, 11, 22, 5, 0) + 1, Ordering::SeqCst);
        w.write_record(b"two\n").unwrap();
        w.flush().unwrap();
        assert!(rotated_files(&live).is_empty());
        // The retry is due: the rotation the boundary asked for happens now.
        w.rotate_retry = Some(Backoff {
            at: Instant::now(),
            delay: RETRY_FIRST,
        });
        BLOCKED_NOW.store(civil("UTC", 2026, 11, 22, 5, 0) + 2, Ordering::SeqCst);
        w.write_record(b"three\n").unwrap();
        w.flush().unwrap();
        let rotated = rotated_files(&live);
        assert_eq!(rotated.len(), 1, "the missed rotation was retried");
        assert_eq!(std::fs::read_to_string(&rotated[0]).unwrap(), "one\ntwo\n");
        assert_eq!(std::fs::read_to_string(&live).unwrap(), "three\n");
    }

    #[test]
    fn a_start_removes_stale_gzip_temp_files_and_settles_plain_and_gz_twins() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("app.log");
        let twin = dir.path().join("app.20261122T110000.0.log");
        std::fs::write(&twin, "whole\n").unwrap();
        // A gzip interrupted by a kill: a truncated archive next to its plain file, and a
        // temporary file of another.
        std::fs::write(dir.path().join("app.20261122T110000.0.log.gz"), b"\x1f\x8b").unwrap();
        let tmp = dir.path().join("app.20261122T110000.1.log.gz.tmp");
        std::fs::write(&tmp, b"\x1f\x8b").unwrap();
        let mut opts = FileOptions::new(&live);
        opts.keep_files = Some(10);
        let (w, _) = FileWriter::open(opts).unwrap();
        drop(w);
        assert!(!tmp.exists(), "stale temp file removed");
        assert_eq!(
            rotated_files(&live),
            vec![twin.clone()],
            "one file, the whole one"
        );
        assert_eq!(std::fs::read_to_string(&twin).unwrap(), "whole\n");
    }

    #[test]
    fn writer_rotates_at_the_zones_boundary_and_names_with_its_clock() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("app.log");
        let mut opts = FileOptions::new(&live);
        opts.period = Some(Period::Hourly);
        opts.zone = Zone::named("Asia/Kolkata").unwrap();
        // 10:29:59 IST = 04:59:59 UTC.
        FAKE_NOW.store(civil("UTC", 2026, 11, 22, 4, 59) + 59, Ordering::SeqCst);
        let (mut w, _) = FileWriter::open_with_clock(opts, fake_clock).unwrap();
        w.write_record(b"one\n").unwrap();
        // 05:00:01 UTC: a UTC hour boundary passed, but not an IST one.
        FAKE_NOW.store(civil("UTC", 2026, 11, 22, 5, 0) + 1, Ordering::SeqCst);
        w.write_record(b"two\n").unwrap();
        assert!(rotated_files(&live).is_empty());
        // 05:30:00 UTC = 11:00:00 IST: rotation, named on the IST clock.
        FAKE_NOW.store(civil("UTC", 2026, 11, 22, 5, 30), Ordering::SeqCst);
        w.write_record(b"three\n").unwrap();
        w.flush().unwrap();
        let rotated = rotated_files(&live);
        assert_eq!(rotated.len(), 1);
        assert_eq!(
            rotated[0].file_name().unwrap().to_string_lossy(),
            "app.20261122T110000.0.log"
        );
        assert_eq!(std::fs::read_to_string(&rotated[0]).unwrap(), "one\ntwo\n");
        assert_eq!(std::fs::read_to_string(&live).unwrap(), "three\n");
    }
}

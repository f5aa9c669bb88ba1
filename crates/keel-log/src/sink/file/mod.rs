//! The file sink: a [`QueueSink`](crate::QueueSink) whose writer is a rotating
//! [`FileWriter`], and its settings.
//!
//! Rotated files are named `<stem>.<yyyymmddTHHMMSS>.<n>.<ext>` next to the live file
//! (`<stem>.<yyyymmddTHHMMSS>.<n>` for a live file without an extension), the stamp on the
//! sink's [`Zone`] clock (UTC unless configured), where `n` makes the name unique even for many
//! rotations in one second (an existing name is never overwritten). With compression on, a
//! background thread gzips each rotated file to `….gz.tmp`, syncs it, renames it to `….gz`
//! and removes the plain one; shutdown waits for it within its timeout, and a start removes a
//! `.gz.tmp` a killed process left and gzips the plain files it left. Retention (count, age, total bytes) runs after each rotation over the rotated
//! files of this log only; the live file is never deleted. On a local clock, stamps repeat in
//! a daylight-saving fall-back hour; names still never collide, but retention (which goes by
//! the stamp) may then take a file of the repeated hour for an older one.
//!
//! # Layout
//! - `rotation`: [`FileWriter`] (buffer, rotation, recovery) and [`Period`].
//! - `retention`: which rotated files are this sink's, their order, gzip, the limits.
//! - `zone`: [`Zone`], the clock of boundaries and stamps.

mod retention;
mod rotation;
mod zone;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use retention::rotated_files;
pub use rotation::{FileWriter, Period};
pub use zone::Zone;

use crate::sink::FlushPolicy;

/// File sink settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FileOptions {
    /// The live log file.
    pub path: PathBuf,
    /// Rotate before a write would take the file past this size.
    pub max_bytes: Option<u64>,
    /// Rotate at hour or day boundaries of [`zone`](Self::zone).
    pub period: Option<Period>,
    /// The clock for rotation boundaries and rotated names (default UTC).
    pub zone: Zone,
    /// Keep at most this many rotated files.
    pub keep_files: Option<usize>,
    /// Delete rotated files older than this.
    pub max_age: Option<Duration>,
    /// Keep rotated files within this many bytes in total.
    pub max_total_bytes: Option<u64>,
    /// Gzip rotated files on a background thread.
    pub compress: bool,
    /// When the writer flushes (default: when its queue drains and at least every second)
    /// and whether it `fsync`s.
    pub flush: FlushPolicy,
}

impl FileOptions {
    /// A file at `path`, no rotation, no retention, no compression, the default flush policy.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            max_bytes: None,
            period: None,
            zone: Zone::utc(),
            keep_files: None,
            max_age: None,
            max_total_bytes: None,
            compress: false,
            flush: FlushPolicy::default(),
        }
    }
}

/// Asks a running [`FileWriter`] to close and reopen its path at the next write (after an
/// external tool renamed it). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ReopenHandle(pub(super) Arc<AtomicBool>);

impl ReopenHandle {
    /// Requests the reopen.
    pub fn reopen(&self) {
        self.0.store(true, Ordering::Release);
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
        let flush = options.flush;
        let name = name.into();
        let (mut writer, reopen) = FileWriter::open(options)?;
        writer.count_rotation_errors_as(&name);
        let queue = crate::sink::QueueSink::start_with_flush(
            name, capacity, policy, flush, format, writer,
        )?;
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

    fn write(&self, record: crate::record::Record) {
        self.queue.write(record);
    }

    fn write_within(&self, record: crate::record::Record, timeout: Duration) -> bool {
        self.queue.write_within(record, timeout)
    }

    fn reopen(&self) {
        self.reopen.reopen();
    }

    fn flush(&self, timeout: Duration) -> crate::sink::DeliveryStats {
        self.queue.flush(timeout)
    }

    fn shutdown(&self, timeout: Duration) -> crate::sink::DeliveryStats {
        self.queue.shutdown(timeout)
    }
}

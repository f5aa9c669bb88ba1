//! The disk buffer: a segmented, checksummed log of encoded documents in `buffer_path`.
//!
//! Files in the directory:
//! - `<id>.seg` (`id` is 20 digits, growing): frames `[len: u32 LE][crc32: u32 LE][len bytes]`,
//!   each an encoded document (action and source lines, `_id` included, so a replay keeps the
//!   ids and overwrites instead of duplicating). A segment is only ever appended to by the
//!   process that created it; a new process starts a new one.
//! - `ack`: `<segment id> <offset>`, the position of the oldest document not yet finished
//!   (accepted by the server per item, or dead-lettered). Written as `ack.tmp`, synced, then
//!   renamed over `ack`, so it is always whole. Everything before it is done; segments wholly
//!   before it are deleted.
//! - `lock`: held with an exclusive file lock while a sink uses the directory.
//!
//! Writes reach the kernel before `write` returns (one `write` call per frame, no user-space
//! buffer), so a killed process loses nothing it accepted; the segment is `fdatasync`ed every
//! [`SYNC_EVERY`] (by a thread of its own, so a slow request does not delay it) and on
//! `flush`/`shutdown`, which bounds what a power loss can take. The `ack` file is written by
//! the sender every [`SYNC_EVERY`] between requests and at shutdown, so a crash replays at
//! most what was finished since (documents are finished only between requests too):
//! at-least-once; the deterministic `_id` makes those replays overwrite.
//!
//! On start every segment from the `ack` position is read and each frame's checksum checked;
//! a frame that is cut short or does not match ends that segment's readable part: the rest
//! of it is skipped and counted (a torn write at a crash, or damage), never a panic. The
//! checksum covers the body, not the length, so intact frames after a bad one in the same
//! segment are skipped too. While running, any error reading a segment back (damage, the
//! file cut short or removed, `EIO`, `EMFILE`) is handled the same way, and a damaged active
//! segment is closed so new frames go to a new one.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::sender::Sender;
use super::state::{Doc, Shared, State};
use crate::error::Error;
use std::sync::Weak;

/// How often the sender syncs the active segment and writes the `ack` file.
pub(super) const SYNC_EVERY: Duration = Duration::from_millis(500);

/// Frame header: length and CRC-32.
pub(super) const HEADER: u64 = 8;

/// The largest frame accepted when reading (a larger length is damage).
const MAX_FRAME: u32 = 64 << 20;

/// A place in the log: segment id and byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Pos {
    pub(super) segment: u64,
    pub(super) offset: u64,
}

impl Pos {
    /// The start of segment `segment`.
    fn start(segment: u64) -> Self {
        Self { segment, offset: 0 }
    }
}

/// A segment and where its readable part ends.
#[derive(Debug)]
struct Segment {
    id: u64,
    /// The end of its valid frames (the write position for the active one).
    end: u64,
}

/// What a start found on disk.
#[derive(Debug, Default)]
pub(super) struct Replay {
    /// Documents not yet finished, to be sent again.
    pub(super) records: usize,
    /// Their bytes, frame headers included.
    pub(super) bytes: usize,
    /// Damaged regions skipped (a torn tail counts as one).
    pub(super) corrupt: u64,
    /// Bytes in those regions.
    pub(super) corrupt_bytes: u64,
}

/// The open disk buffer: the active segment for appends, a reader for documents not yet in
/// memory, and the acknowledged position.
#[derive(Debug)]
pub(super) struct DiskBuffer {
    dir: PathBuf,
    _lock: File,
    segments: std::collections::VecDeque<Segment>,
    writer: File,
    segment_size: u64,
    /// The next frame to read into memory (documents written while nothing waited on disk
    /// went to memory directly and are skipped).
    pub(super) read: Pos,
    /// An open segment: its id, the offset its file position is at, the file.
    reader: Option<(u64, u64, File)>,
    /// The last position written to the `ack` file.
    acked: Pos,
    /// The active segment's file no longer matches its recorded end (a failed write that
    /// could not be undone, or damage found in it): appends refuse until a roll succeeds.
    poisoned: bool,
}

fn seg_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

fn io_err(sink: &str, path: &Path, e: &io::Error) -> Error {
    Error::Sink {
        sink: sink.to_owned(),
        source: io::Error::new(e.kind(), format!("disk buffer {}: {e}", path.display())),
    }
}

/// Reads one frame at the reader's position; `Ok(None)` when the frame is cut short or its
/// checksum does not match.
fn read_frame(file: &mut impl Read, limit: u64, at: u64) -> io::Result<Option<Vec<u8>>> {
    if at + HEADER > limit {
        return Ok(None);
    }
    let mut head = [0u8; 8];
    file.read_exact(&mut head)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len > MAX_FRAME || at + HEADER + u64::from(len) > limit {
        return Ok(None);
    }
    let mut body = vec![0u8; len as usize];
    file.read_exact(&mut body)?;
    Ok((checksum(&body) == crc).then_some(body))
}

fn checksum(bytes: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(bytes);
    crc.sum()
}

impl DiskBuffer {
    /// Opens (or creates) the buffer in `dir`, takes its lock, and scans what is left to send.
    ///
    /// # Errors
    /// [`Error::BufferLocked`] when another sink (in this process or another) holds it;
    /// [`Error::Sink`] for I/O errors.
    pub(super) fn open(sink: &str, dir: &Path, max_bytes: u64) -> Result<(Self, Replay), Error> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(sink, dir, &e))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err(sink, &lock_path, &e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::BufferLocked {
                    sink: sink.to_owned(),
                    path: dir.display().to_string(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(sink, &lock_path, &e)),
        }
        let acked = read_ack(dir);
        let mut ids: Vec<u64> = std::fs::read_dir(dir)
            .map_err(|e| io_err(sink, dir, &e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".seg")?.parse().ok()
            })
            .collect();
        ids.sort_unstable();
        let mut replay = Replay::default();
        let mut segments = std::collections::VecDeque::new();
        for &id in &ids {
            let path = seg_path(dir, id);
            if id < acked.segment {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let start = if id == acked.segment { acked.offset } else { 0 };
            let (end, records, bytes, damaged) =
                scan(&path, start).map_err(|e| io_err(sink, &path, &e))?;
            replay.records += records;
            replay.bytes += bytes;
            if damaged > 0 {
                replay.corrupt += 1;
                replay.corrupt_bytes += damaged;
            }
            segments.push_back(Segment { id, end });
        }
        let read = match segments.front() {
            Some(s) if s.id == acked.segment => acked,
            Some(s) => Pos::start(s.id),
            None => acked,
        };
        // Never append after what an earlier process wrote (its tail may be torn).
        let active = ids
            .last()
            .map_or(acked.segment, |&last| last.max(acked.segment))
            + 1;
        let path = seg_path(dir, active);
        let writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_err(sink, &path, &e))?;
        segments.push_back(Segment { id: active, end: 0 });
        let buffer = Self {
            dir: dir.to_owned(),
            _lock: lock,
            segments,
            writer,
            segment_size: (max_bytes / 8).clamp(64 << 10, 16 << 20),
            read,
            reader: None,
            acked: read,
            poisoned: false,
        };
        Ok((buffer, replay))
    }

    /// Appends one encoded document; returns its position. Rolls to a new segment when the
    /// active one is full.
    pub(super) fn append(&mut self, bytes: &[u8]) -> io::Result<Pos> {
        let len = u32::try_from(bytes.len())
            .ok()
            .filter(|&l| l <= MAX_FRAME)
            .ok_or_else(|| io::Error::other("document too large for the disk buffer"))?;
        if self.poisoned {
            self.roll()?;
        }
        let active = self.segments.back().map_or(0, |s| s.end);
        if active > 0 && active + HEADER + u64::from(len) > self.segment_size {
            self.roll()?;
        }
        let mut frame = Vec::with_capacity(bytes.len() + HEADER as usize);
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(&checksum(bytes).to_le_bytes());
        frame.extend_from_slice(bytes);
        let segment = self.segments.back_mut().expect("an active segment");
        let at = Pos {
            segment: segment.id,
            offset: segment.end,
        };
        if let Err(e) = self.writer.write_all(&frame) {
            // A partial frame would hide every later one and put them at offsets that do
            // not match the recorded ones: cut it off, or when that fails too, refuse
            // appends until a new segment is started.
            if self.writer.set_len(at.offset).is_err() {
                self.poisoned = true;
                let _ = self.roll();
            }
            return Err(e);
        }
        segment.end += frame.len() as u64;
        Ok(at)
    }

    fn roll(&mut self) -> io::Result<()> {
        // A poisoned segment is left behind whatever its sync says.
        if let Err(e) = self.writer.sync_data()
            && !self.poisoned
        {
            return Err(e);
        }
        let id = self.segments.back().map_or(0, |s| s.id) + 1;
        self.writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(seg_path(&self.dir, id))?;
        self.segments.push_back(Segment { id, end: 0 });
        self.poisoned = false;
        Ok(())
    }

    /// The position after the last frame written.
    pub(super) fn end(&self) -> Pos {
        let s = self.segments.back().expect("an active segment");
        Pos {
            segment: s.id,
            offset: s.end,
        }
    }

    /// The bytes of the segments from the `ack` position to the end: what the files hold
    /// beyond the finished part of the segment holding the `ack` position (and regions
    /// skipped as damaged). The disk bound counts these, so one document stuck in retry
    /// cannot keep an unbounded number of later, finished segments on disk.
    pub(super) fn live_bytes(&self) -> u64 {
        self.segments
            .iter()
            .filter(|s| s.id >= self.acked.segment)
            .map(|s| {
                if s.id == self.acked.segment {
                    s.end.saturating_sub(self.acked.offset)
                } else {
                    s.end
                }
            })
            .sum()
    }

    /// The next not yet read frame with its position, or `None` at the end. A frame that
    /// fails its checksum now (damage after the start) ends its segment's readable part.
    pub(super) fn read_next(&mut self) -> io::Result<Option<(Pos, Vec<u8>)>> {
        loop {
            // The first segment at or after the read position (earlier ones are deleted).
            let Some(index) = self.segments.iter().position(|s| s.id >= self.read.segment) else {
                return Ok(None);
            };
            if self.segments[index].id > self.read.segment {
                self.read = Pos::start(self.segments[index].id);
            }
            let end = self.segments[index].end;
            if self.read.offset >= end {
                match self.segments.get(index + 1) {
                    Some(next) => self.read = Pos::start(next.id),
                    None => return Ok(None),
                }
                continue;
            }
            let read = self.read_frame_at(end);
            match read {
                Ok(Some(body)) => {
                    let at = self.read;
                    self.read.offset += HEADER + body.len() as u64;
                    return Ok(Some((at, body)));
                }
                other => {
                    // Damage, or a read error (the file removed or cut short by someone
                    // else, EMFILE, EIO): the segment's readable part ends here either way,
                    // so the next call goes on with the next segment instead of failing at
                    // the same place forever.
                    let err = other.err().unwrap_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidData, "a damaged frame")
                    });
                    let path = seg_path(&self.dir, self.read.segment);
                    self.reader = None;
                    self.segments[index].end = self.read.offset;
                    if index + 1 == self.segments.len() {
                        // The active segment: later frames must not go after the unreadable
                        // part (their positions would not match the file).
                        self.poisoned = true;
                        let _ = self.roll();
                    }
                    return Err(io::Error::new(
                        err.kind(),
                        format!("reading {}: {err}", path.display()),
                    ));
                }
            }
        }
    }

    /// Reads the frame at the read position (opening the segment when needed, seeking when
    /// the read position was moved past documents that went to memory directly).
    fn read_frame_at(&mut self, end: u64) -> io::Result<Option<Vec<u8>>> {
        let at = self.read;
        match &mut self.reader {
            Some((id, offset, file)) if *id == at.segment => {
                if *offset != at.offset {
                    *offset = at.offset;
                    file.seek(SeekFrom::Start(at.offset))?;
                }
            }
            _ => {
                self.reader = None;
                let mut file = File::open(seg_path(&self.dir, at.segment))?;
                file.seek(SeekFrom::Start(at.offset))?;
                self.reader = Some((at.segment, at.offset, file));
            }
        }
        let (_, offset, file) = self.reader.as_mut().expect("opened above");
        let body = read_frame(file, end, at.offset)?;
        if let Some(body) = &body {
            *offset = at.offset + HEADER + body.len() as u64;
        }
        Ok(body)
    }

    /// A handle to sync the active segment without holding the buffer's lock.
    pub(super) fn sync_handle(&self) -> io::Result<File> {
        self.writer.try_clone()
    }

    /// Records that everything before `pos` is finished: writes the `ack` file (temp, sync,
    /// rename) and deletes the segments wholly before it.
    pub(super) fn acknowledge(&mut self, pos: Pos) -> io::Result<()> {
        if pos <= self.acked {
            return Ok(());
        }
        let tmp = self.dir.join("ack.tmp");
        {
            let mut f = File::create(&tmp)?;
            writeln!(f, "{} {}", pos.segment, pos.offset)?;
            f.sync_data()?;
        }
        std::fs::rename(&tmp, self.dir.join("ack"))?;
        self.acked = pos;
        while self.segments.len() > 1 && self.segments[0].id < pos.segment {
            let s = self.segments.pop_front().expect("len > 1");
            let _ = std::fs::remove_file(seg_path(&self.dir, s.id));
        }
        Ok(())
    }
}

impl Sender {
    /// Reads documents waiting on disk into memory, up to two batches' worth.
    pub(super) fn refill(&self, state: &mut State) {
        let opts = &self.shared.opts;
        while state.spilled > 0
            && state.queue.len() < 2 * opts.batch_records
            && state.queued_bytes < 2 * opts.batch_bytes
        {
            let Some(disk) = state.disk.as_mut() else {
                return;
            };
            match disk.read_next() {
                Ok(Some((pos, body))) => {
                    let doc = Doc::encoded(state.next_seq - state.spilled as u64, body, Some(pos));
                    state.spilled -= 1;
                    state.spilled_bytes = state.spilled_bytes.saturating_sub(doc.size);
                    state.queued_bytes += doc.size;
                    state.queue.push_back((Instant::now(), doc));
                }
                Ok(None) => {
                    // Damage found while reading hid some documents: they are lost.
                    let (lost, bytes) = (state.spilled, state.spilled_bytes);
                    state.records -= lost;
                    state.bytes -= bytes;
                    state.spilled = 0;
                    state.spilled_bytes = 0;
                    self.shared.failed.fetch_add(lost as u64, Ordering::Relaxed);
                    self.shared.note_error(&format!(
                        "disk buffer: {lost} documents could not be read back"
                    ));
                }
                Err(e) => {
                    // The reader has moved past the unreadable part: go on at the next tick
                    // (never spin here, the state lock is held).
                    self.shared.metrics.disk_corrupt.inc();
                    self.shared.note_error(&format!(
                        "disk buffer: {e}; the rest of that segment is skipped"
                    ));
                    break;
                }
            }
        }
    }

    /// Every [`SYNC_EVERY`] (or when `force`d): acknowledges what is finished (the oldest
    /// unfinished document is in `retry`, the queue, or still on disk) and returns the active
    /// segment for the caller to sync once it has let go of the state lock.
    pub(super) fn checkpoint(
        &mut self,
        state: &mut State,
        retry: &VecDeque<Doc>,
        force: bool,
    ) -> Option<File> {
        let live = state.disk.as_ref().map(DiskBuffer::live_bytes)?;
        // Near the bound the disk bound counts from the ack position: move it every round
        // (writers wait or drop until it moves), not only every SYNC_EVERY.
        let bound = self.shared.bounds().1 as u64;
        let timed = force || self.last_checkpoint.elapsed() >= SYNC_EVERY;
        if !timed && live < bound / 2 {
            return None;
        }
        if timed {
            self.last_checkpoint = Instant::now();
        }
        let held = retry
            .iter()
            .chain(state.queue.iter().map(|(_, d)| d))
            .filter_map(|d| d.pos)
            .min();
        let spilled = state.spilled > 0;
        let disk = state.disk.as_mut()?;
        let pos = held.unwrap_or(if spilled { disk.read } else { disk.end() });
        // Dead letters not yet written by their sink (its flush timed out): acknowledging
        // now could lose them from both; they are acknowledged once they are written.
        if self.dead_letters_unflushed.get() {
            self.shared.note_error(
                "disk buffer: the dead-letter file is behind; the ack position waits for it",
            );
        } else if let Err(e) = disk.acknowledge(pos) {
            self.shared
                .note_error(&format!("disk buffer: cannot write its ack file: {e}"));
        } else {
            // Room under the disk bound for writers waiting on it.
            self.shared.space.notify_all();
        }
        if timed { disk.sync_handle().ok() } else { None }
    }
}

/// Starts the thread that syncs the active segment every [`SYNC_EVERY`], whatever the sender
/// is doing (a `_bulk` request can take up to its timeout). It holds the state lock only to
/// take a handle to the segment, and ends once the sink is gone or its buffer closed.
pub(super) fn spawn_syncer(name: &str, shared: Weak<Shared>) -> io::Result<()> {
    std::thread::Builder::new()
        .name(format!("keel-es-sync-{name}"))
        .spawn(move || {
            loop {
                std::thread::sleep(SYNC_EVERY);
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let handle = {
                    let state = shared.lock();
                    match state.disk.as_ref() {
                        Some(disk) => disk.sync_handle(),
                        None => return,
                    }
                };
                drop(shared);
                if let Ok(file) = handle {
                    let _ = file.sync_data();
                }
            }
        })
        .map(drop)
}

fn read_ack(dir: &Path) -> Pos {
    let text = std::fs::read_to_string(dir.join("ack")).unwrap_or_default();
    let mut parts = text.split_whitespace().map(str::parse::<u64>);
    match (parts.next(), parts.next()) {
        (Some(Ok(segment)), Some(Ok(offset))) => Pos { segment, offset },
        _ => Pos::start(0),
    }
}

/// Reads the frames of a segment from `start`: `(end of the valid frames, documents, their
/// bytes with headers, bytes skipped after a damaged frame)`.
fn scan(path: &Path, start: u64) -> io::Result<(u64, usize, usize, u64)> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut at = start.min(len);
    file.seek(SeekFrom::Start(at))?;
    let mut file = io::BufReader::new(file);
    let (mut records, mut bytes) = (0, 0);
    while let Ok(Some(body)) = read_frame(&mut file, len, at) {
        at += HEADER + body.len() as u64;
        records += 1;
        bytes += body.len() + HEADER as usize;
    }
    Ok((at, records, bytes, len - at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_a_torn_tail_is_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (mut buf, replay) = DiskBuffer::open("t", dir.path(), 1 << 20).unwrap();
        assert_eq!(replay.records, 0);
        for i in 0..10 {
            buf.append(format!("doc {i}\n").as_bytes()).unwrap();
        }
        let (_, first) = buf.read_next().unwrap().unwrap();
        assert_eq!(first, b"doc 0\n");
        let end = buf.end();
        drop(buf);
        // Tear the last frame.
        let path = seg_path(dir.path(), end.segment);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(end.offset - 3).unwrap();
        let (mut buf, replay) = DiskBuffer::open("t", dir.path(), 1 << 20).unwrap();
        assert_eq!((replay.records, replay.corrupt), (9, 1));
        let mut read = Vec::new();
        while let Some((_, body)) = buf.read_next().unwrap() {
            read.push(String::from_utf8(body).unwrap());
        }
        assert_eq!(read.len(), 9);
        assert_eq!(read[8], "doc 8\n");
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let (_buf, _) = DiskBuffer::open("a", dir.path(), 1 << 20).unwrap();
        let err = DiskBuffer::open("b", dir.path(), 1 << 20).unwrap_err();
        assert!(matches!(err, Error::BufferLocked { .. }), "{err}");
    }

    #[test]
    fn acknowledged_segments_are_deleted_and_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut buf, _) = DiskBuffer::open("t", dir.path(), 64 << 10).unwrap();
        let big = vec![b'x'; 4000];
        let mut positions = Vec::new();
        for _ in 0..40 {
            positions.push(buf.append(&big).unwrap());
        }
        assert!(positions[39].segment > positions[0].segment, "rolled");
        buf.acknowledge(positions[30]).unwrap();
        let live = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "seg")
            })
            .count();
        assert!(live < 10, "{live} segments left");
        drop(buf);
        let (_, replay) = DiskBuffer::open("t", dir.path(), 64 << 10).unwrap();
        assert_eq!(replay.records, 10);
    }

    /// Reads every frame left, calling `read_next` at most `limit` times (a reader that never
    /// moves on fails here instead of hanging): the bodies read and the errors met.
    fn drain(buf: &mut DiskBuffer, limit: usize) -> (Vec<Vec<u8>>, usize) {
        let (mut bodies, mut errors) = (Vec::new(), 0);
        for _ in 0..limit {
            match buf.read_next() {
                Ok(Some((_, body))) => bodies.push(body),
                Ok(None) => return (bodies, errors),
                Err(_) => errors += 1,
            }
        }
        panic!("the reader did not reach the end in {limit} calls ({errors} errors)");
    }

    #[test]
    fn a_segment_removed_under_the_reader_is_skipped_not_retried_forever() {
        let dir = tempfile::tempdir().unwrap();
        let (mut buf, _) = DiskBuffer::open("t", dir.path(), 64 << 10).unwrap();
        let big = vec![b'x'; 4000];
        let positions: Vec<Pos> = (0..40).map(|_| buf.append(&big).unwrap()).collect();
        let first = positions[0].segment;
        assert!(positions[39].segment > first + 1, "three segments at least");
        std::fs::remove_file(seg_path(dir.path(), first)).unwrap();
        let (bodies, errors) = drain(&mut buf, 100);
        let later = positions.iter().filter(|p| p.segment > first).count();
        assert_eq!((bodies.len(), errors), (later, 1));
    }

    #[test]
    fn a_segment_cut_short_under_the_reader_loses_only_its_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (mut buf, _) = DiskBuffer::open("t", dir.path(), 64 << 10).unwrap();
        let big = vec![b'x'; 4000];
        let positions: Vec<Pos> = (0..40).map(|_| buf.append(&big).unwrap()).collect();
        let first = positions[0].segment;
        let f = OpenOptions::new()
            .write(true)
            .open(seg_path(dir.path(), first))
            .unwrap();
        f.set_len(positions[3].offset + 10).unwrap();
        let (bodies, errors) = drain(&mut buf, 100);
        let later = positions.iter().filter(|p| p.segment > first).count();
        assert_eq!((bodies.len(), errors), (3 + later, 1));
    }

    #[test]
    fn damage_in_the_active_segment_sends_later_appends_to_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let (mut buf, _) = DiskBuffer::open("t", dir.path(), 1 << 20).unwrap();
        let positions: Vec<Pos> = (0..5)
            .map(|i| buf.append(format!("doc {i}\n").as_bytes()).unwrap())
            .collect();
        // Flip a byte of the third frame's body.
        let path = seg_path(dir.path(), positions[2].segment);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[(positions[2].offset + HEADER) as usize] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (bodies, errors) = drain(&mut buf, 100);
        assert_eq!((bodies.len(), errors), (2, 1));
        let at = buf.append(b"after\n").unwrap();
        assert!(at.segment > positions[0].segment, "{at:?}");
        let (bodies, errors) = drain(&mut buf, 100);
        assert_eq!((bodies, errors), (vec![b"after\n".to_vec()], 0));
    }

    #[test]
    fn after_a_failed_write_later_frames_are_where_their_positions_say() {
        let dir = tempfile::tempdir().unwrap();
        let (mut buf, _) = DiskBuffer::open("t", dir.path(), 1 << 20).unwrap();
        buf.append(b"before\n").unwrap();
        // A device that fails every write (and cannot be truncated).
        let good = std::mem::replace(
            &mut buf.writer,
            OpenOptions::new().write(true).open("/dev/full").unwrap(),
        );
        assert!(buf.append(b"lost\n").is_err());
        drop(good);
        let at = buf.append(b"after\n").unwrap();
        let (bodies, errors) = drain(&mut buf, 100);
        assert_eq!(
            (bodies, errors),
            (vec![b"before\n".to_vec(), b"after\n".to_vec()], 0)
        );
        assert!(at.segment > 0 && at.offset == 0, "{at:?}");
    }

    #[test]
    fn the_reader_follows_a_read_position_moved_past_documents_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let (mut buf, _) = DiskBuffer::open("t", dir.path(), 1 << 20).unwrap();
        buf.append(b"read 0\n").unwrap();
        assert_eq!(buf.read_next().unwrap().unwrap().1, b"read 0\n");
        // Went to memory directly: the reader goes on after it.
        buf.append(b"in memory\n").unwrap();
        buf.read = buf.end();
        buf.append(b"spilled\n").unwrap();
        let (bodies, errors) = drain(&mut buf, 100);
        assert_eq!((bodies, errors), (vec![b"spilled\n".to_vec()], 0));
    }
}

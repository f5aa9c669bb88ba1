//! Live reload of a logger config file: a [`Reloader`] polls the file and applies it with
//! [`Manager::reload`] when its content changes, when [`Reloader::reload_now`] is called, and
//! (feature `sighup`, only after an explicit [`Reloader::reload_on_sighup`]) on SIGHUP.
//!
//! A config that does not read, parse or validate changes nothing: the logger keeps its
//! settings, and the error goes to the `on_result` callback (once per change of the file, not
//! once per poll).
//!
//! ```no_run
//! use std::time::Duration;
//! use keel_log::{Reloader, global};
//!
//! let reloader = Reloader::watch(global(), "/etc/svc/log.toml", Duration::from_secs(2), |result| {
//!     if let Err(e) = result {
//!         eprintln!("log config not reloaded: {e}");
//!     }
//! })
//! .unwrap();
//! reloader.reload_now();
//! ```

use std::borrow::Borrow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::config::LogConfig;
use crate::error::Error;
use crate::manager::{Manager, ReloadReport};

enum Command {
    Reload,
    Stop,
}

/// Watches a config file and reloads its logger in a [`Manager`] (see the module docs).
/// Dropping it (or [`stop`](Self::stop)) stops the watch thread.
#[derive(Debug)]
pub struct Reloader {
    commands: Sender<Command>,
    thread: Option<std::thread::JoinHandle<()>>,
    path: PathBuf,
}

impl Reloader {
    /// Starts a thread that reads `path` every `interval` (at least 10 ms) and reloads it into
    /// `manager` (a `&'static Manager` such as [`global`](crate::global)`()`, or an
    /// `Arc<Manager>`) when its content changed since the last read. The file is read and
    /// applied once at the start. `on_result` gets the outcome of every reload attempt.
    ///
    /// # Errors
    /// [`Error::Sink`] when the thread cannot start.
    pub fn watch<M, F>(
        manager: M,
        path: impl AsRef<Path>,
        interval: Duration,
        mut on_result: F,
    ) -> Result<Self, Error>
    where
        M: Borrow<Manager> + Send + 'static,
        F: FnMut(&Result<ReloadReport, Error>) + Send + 'static,
    {
        let path = path.as_ref().to_path_buf();
        let interval = interval.max(Duration::from_millis(10));
        let (commands, rx) = crossbeam_channel::unbounded();
        let watched = path.clone();
        let thread = std::thread::Builder::new()
            .name("keel-log-reload".into())
            .spawn(move || watch_loop(manager.borrow(), &watched, interval, &rx, &mut on_result))
            .map_err(|source| Error::Sink {
                sink: format!("reload:{}", path.display()),
                source,
            })?;
        Ok(Self {
            commands,
            thread: Some(thread),
            path,
        })
    }

    /// The watched file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Asks the watch thread to read and apply the file now, changed or not (what a SIGHUP
    /// handler of the application calls). Returns at once; the outcome goes to `on_result`.
    pub fn reload_now(&self) {
        let _ = self.commands.send(Command::Reload);
    }

    /// Reloads on every SIGHUP the process receives, from now until the reloader stops.
    /// This installs a process-wide SIGHUP handler (through tokio's signal driver, on a
    /// thread of its own): SIGHUP no longer terminates the process. Only call it when the
    /// application does not handle SIGHUP itself; otherwise call
    /// [`reload_now`](Self::reload_now) from its handler.
    ///
    /// The handler stays installed for the life of the process (tokio never uninstalls one):
    /// after the reloader stops, a SIGHUP is ignored rather than terminating the process.
    /// Calling this twice reloads twice per SIGHUP.
    ///
    /// # Errors
    /// [`Error::Sink`] when the handler or its thread cannot be set up.
    #[cfg(all(unix, feature = "sighup"))]
    pub fn reload_on_sighup(&self) -> Result<(), Error> {
        use tokio::signal::unix::{SignalKind, signal};
        let failed = |source: std::io::Error| Error::Sink {
            sink: "reload:sighup".into(),
            source,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(failed)?;
        // Registered here, so a SIGHUP right after this call returns is not missed.
        let mut hangups = runtime
            .block_on(async { signal(SignalKind::hangup()) })
            .map_err(failed)?;
        let commands = self.commands.clone();
        std::thread::Builder::new()
            .name("keel-log-sighup".into())
            .spawn(move || {
                runtime.block_on(async move {
                    while hangups.recv().await.is_some() {
                        if commands.send(Command::Reload).is_err() {
                            break;
                        }
                    }
                });
            })
            .map_err(failed)?;
        Ok(())
    }

    /// Stops the watch thread and waits for it.
    pub fn stop(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        let _ = self.commands.send(Command::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Reloader {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::ConfigFile {
        path: path.display().to_string(),
        source,
    })
}

fn watch_loop(
    manager: &Manager,
    path: &Path,
    interval: Duration,
    commands: &Receiver<Command>,
    on_result: &mut dyn FnMut(&Result<ReloadReport, Error>),
) {
    // `None`: never read; an unreadable file counts as a content of its own (its error is
    // reported once, not every poll).
    let mut last: Option<Result<Vec<u8>, String>> = None;
    let mut forced = true;
    loop {
        let now = read(path);
        let seen = match &now {
            Ok(bytes) => Ok(bytes.clone()),
            Err(e) => Err(e.to_string()),
        };
        if forced || last.as_ref() != Some(&seen) {
            let result = now
                .and_then(|bytes| {
                    let text = String::from_utf8(bytes)
                        .map_err(|e| Error::Parse(format!("{}: {e}", path.display())))?;
                    LogConfig::from_text_of(path, &text)
                })
                .and_then(|config| manager.reload(&config));
            on_result(&result);
            last = Some(seen);
        }
        forced = false;
        match commands.recv_timeout(interval) {
            Ok(Command::Reload) => forced = true,
            Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
}

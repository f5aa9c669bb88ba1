//! The child supervisor of `keel lock` and `keel elect`: the command never outlives the hold.
//!
//! keel (the *parent*, which talks to the store and renews the hold) does not start the command
//! itself. It runs its own binary again in a hidden guard mode (`keel __guard`), and the
//! *guard* starts the command in a new process group and waits for it:
//!
//! ```text
//! keel (renews the lock)  --control pipe-->  keel __guard  --spawns-->  CMD's process group
//!                         <--status pipe---  (subreaper)
//! ```
//!
//! - **keel dies** (SIGKILL, OOM kill, panic): only keel holds the control pipe's write end, so
//!   the guard reads EOF and SIGKILLs the command's whole group at once.
//! - **keel freezes** (SIGSTOP, a stuck runtime): after each successful renewal keel sends the
//!   hold's new deadline as an absolute `CLOCK_MONOTONIC` time (a message delayed by a freeze
//!   cannot stretch the hold). The guard enforces it on its own clock: SIGTERM to the group at
//!   `deadline - term_before`, SIGKILL at `deadline - kill_before`, so the command is gone
//!   before the lock can expire on the server. (If the guard itself is frozen, keel kills the
//!   group and the guard a little later: [`Supervisor::kill_all`].)
//! - **grandchildren**: signals go to the command's process group; the guard is a child
//!   subreaper, so descendants orphaned inside the group are reparented to it and reaped.
//! - **keel and the guard killed together**: the command itself (not its children) has
//!   `PR_SET_PDEATHSIG = SIGKILL` (set by a `pre_exec` hook in the guard, whose only thread is
//!   the one that spawned it).
//! - **release only after the command is gone**: the guard reports the end only once
//!   `kill(-pgid, 0)` says the group has no process left. If that cannot be confirmed, keel
//!   does not release and the TTL runs out instead.
//!
//! Control lines (keel → guard): `deadline <monotonic ns>`, `stop <grace ns>`. Status lines
//! (guard → keel): `started <pid>`, then one of `exited <code>` (the command ended, or was
//! stopped on request), `expired <code>` (the guard stopped it at the deadline),
//! `unconfirmed <code>` (the group did not go away), or `failed <message>` (could not start).
//!
//! Linux only: `/proc`, `prctl` and `CLOCK_MONOTONIC` shared between processes.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::time::{ClockId, clock_gettime};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::net::unix::pipe;

/// Now on `CLOCK_MONOTONIC`, in nanoseconds: the same clock in every process on this host.
fn mono_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|t| {
            let secs = u64::try_from(t.tv_sec()).unwrap_or(0);
            let nanos = u64::try_from(t.tv_nsec()).unwrap_or(0);
            secs.saturating_mul(1_000_000_000).saturating_add(nanos)
        })
        .unwrap_or(0)
}

/// `at` as an absolute `CLOCK_MONOTONIC` time. The monotonic clock is read first: if this
/// process freezes between the two reads, the result comes out earlier, never later.
fn to_mono_ns(at: tokio::time::Instant) -> u64 {
    let mono = mono_ns();
    let now = tokio::time::Instant::now();
    if at >= now {
        mono.saturating_add(duration_ns(at - now))
    } else {
        mono.saturating_sub(duration_ns(now - at))
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// When the guard stops the command, relative to the hold's deadline.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// SIGTERM this long before the deadline when no renewal moved it.
    pub term_before: Duration,
    /// SIGKILL this long before the deadline: the command must be gone by then.
    pub kill_before: Duration,
}

impl Timing {
    /// For a hold of `ttl` renewed every `ttl / 3` (a lock's watchdog, which retries a failed
    /// renewal after `ttl / 10`) or every retry period with a renew deadline of `2/3 ttl` (an
    /// election): SIGTERM a quarter of the TTL before the deadline, SIGKILL an eighth before
    /// it.
    pub fn for_hold(ttl: Duration) -> Self {
        Self {
            term_before: ttl / 4,
            kill_before: ttl / 8,
        }
    }
}

/// How a supervised command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// It exited (or was stopped on request); its whole group is gone. The exit code, or
    /// 128 + signal.
    Exited(i32),
    /// The guard stopped it because the deadline came without a renewal; its group is gone.
    Expired(i32),
    /// Its group could not be confirmed gone (or the guard itself vanished): do not release,
    /// let the TTL run out.
    Unconfirmed(i32),
}

/// Why [`Supervisor::spawn`] failed.
#[derive(Debug)]
pub enum SpawnError {
    /// Nothing was started (no command, no guard, or the guard could not run the command).
    NotStarted(anyhow::Error),
    /// The guard did not answer in time and was killed; the command may have started for a
    /// moment: do not release the hold, let it run out.
    Uncertain(anyhow::Error),
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotStarted(e) | Self::Uncertain(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for SpawnError {}

/// keel's side: a command running under a guard process.
pub struct Supervisor {
    ctl: pipe::Sender,
    status: Lines<BufReader<pipe::Receiver>>,
    guard: tokio::process::Child,
    pgid: i32,
    sent_deadline: u64,
}

/// Lets the guard inherit `fd` across exec (pipes are created close-on-exec).
fn inheritable(fd: impl AsFd) -> Result<()> {
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty())).context("fcntl(F_SETFD)")?;
    Ok(())
}

impl Supervisor {
    /// Starts `command` (program and arguments) under a guard with the hold's current
    /// `deadline`, adding `env` to its environment; returns once it runs.
    ///
    /// # Errors
    /// When the guard or the command cannot be started.
    pub async fn spawn(
        command: &[String],
        env: &[(&str, String)],
        deadline: tokio::time::Instant,
        timing: Timing,
    ) -> Result<Self, SpawnError> {
        let mut guard = Self::start_guard(command, env, deadline, timing)
            .await
            .map_err(SpawnError::NotStarted)?;
        let first = tokio::time::timeout(Duration::from_secs(10), guard.status.next_line()).await;
        let first = match first {
            Ok(line) => line.context("reading from the guard"),
            Err(_) => {
                // SIGKILL the guard: the kernel then SIGKILLs a command it may have started.
                let _ = guard.guard.start_kill();
                return Err(SpawnError::Uncertain(anyhow::anyhow!(
                    "the guard did not report the command's start within 10 s"
                )));
            }
        }
        .map_err(SpawnError::NotStarted)?;
        guard.pgid = match first.as_deref().and_then(|l| l.split_once(' ')) {
            Some(("started", pid)) => pid
                .parse::<i32>()
                .map_err(|_| SpawnError::Uncertain(anyhow::anyhow!("bad guard message")))?,
            Some(("failed", why)) => return Err(SpawnError::NotStarted(anyhow::anyhow!("{why}"))),
            _ => {
                return Err(SpawnError::NotStarted(anyhow::anyhow!(
                    "the guard process ended before starting the command"
                )));
            }
        };
        Ok(guard)
    }

    async fn start_guard(
        command: &[String],
        env: &[(&str, String)],
        deadline: tokio::time::Instant,
        timing: Timing,
    ) -> Result<Self> {
        if command.is_empty() {
            bail!("no command given");
        }
        let (ctl_read, ctl_write) = std::io::pipe().context("pipe")?;
        let (status_read, status_write) = std::io::pipe().context("pipe")?;
        // Only the guard's two ends are inherited. keel starts no other process meanwhile, so
        // no other child can pick them up; keel's own ends stay close-on-exec, so neither the
        // guard nor the command holds the control write end (its EOF means keel is gone).
        inheritable(&ctl_read)?;
        inheritable(&status_write)?;
        // `/proc/self/exe` names this very binary even after the file was replaced or deleted
        // (an upgrade while `keel elect` runs); `current_exe()` would then point nowhere.
        let exe = std::path::PathBuf::from("/proc/self/exe");
        let deadline_ns = to_mono_ns(deadline);
        let guard = tokio::process::Command::new(exe)
            .arg("__guard")
            .arg(format!("--ctl={}", ctl_read.as_raw_fd()))
            .arg(format!("--status={}", status_write.as_raw_fd()))
            .arg(format!("--deadline-ns={deadline_ns}"))
            .arg(format!(
                "--term-before-ns={}",
                duration_ns(timing.term_before)
            ))
            .arg(format!(
                "--kill-before-ns={}",
                duration_ns(timing.kill_before)
            ))
            .arg("--")
            .args(command)
            .envs(env.iter().map(|(k, v)| (k, v)))
            // Its own group: a Ctrl-C or Ctrl-Z meant for keel does not reach the guard.
            .process_group(0)
            .spawn()
            .context("cannot start the keel guard process")?;
        drop(ctl_read);
        drop(status_write);
        let ctl = pipe::Sender::from_owned_fd(OwnedFd::from(ctl_write))?;
        let status =
            BufReader::new(pipe::Receiver::from_owned_fd(OwnedFd::from(status_read))?).lines();
        Ok(Self {
            ctl,
            status,
            guard,
            pgid: 0,
            sent_deadline: deadline_ns,
        })
    }

    /// Tells the guard the hold's deadline moved (after a successful renewal).
    pub fn set_deadline(&mut self, deadline: tokio::time::Instant) {
        let ns = to_mono_ns(deadline);
        // Sub-millisecond differences are the conversion's own jitter, not a renewal.
        if ns.abs_diff(self.sent_deadline) < 1_000_000 {
            return;
        }
        self.sent_deadline = ns;
        let _ = self.ctl.try_write(format!("deadline {ns}\n").as_bytes());
    }

    /// Asks the guard to stop the command: SIGTERM now, SIGKILL after `grace` (never later
    /// than the guard's own kill time).
    pub fn stop(&mut self, grace: Duration) {
        let _ = self
            .ctl
            .try_write(format!("stop {}\n", duration_ns(grace)).as_bytes());
    }

    /// The last resort when the guard has not reported the end by the time it should have
    /// killed the command (the guard itself frozen or stuck): SIGKILL the command's group and
    /// the guard. [`ended`](Self::ended) then reports [`End::Unconfirmed`].
    pub fn kill_all(&mut self) {
        let _ = kill(Pid::from_raw(-self.pgid), Signal::SIGKILL);
        let _ = self.guard.start_kill();
    }

    /// Waits for the command's end. Cancel-safe: nothing is consumed that a later call needs
    /// (the guard process is reaped by tokio in the background).
    pub async fn ended(&mut self) -> End {
        loop {
            match self.status.next_line().await {
                Ok(Some(line)) => {
                    let Some((kind, code)) = line.split_once(' ') else {
                        continue;
                    };
                    let code = code.parse().unwrap_or(1);
                    return match kind {
                        "exited" => End::Exited(code),
                        "expired" => End::Expired(code),
                        "unconfirmed" => End::Unconfirmed(code),
                        _ => continue,
                    };
                }
                // The guard vanished without a word: kill the group ourselves. The command
                // cannot be reaped from here, so its end cannot be confirmed.
                Ok(None) | Err(_) => {
                    let _ = kill(Pid::from_raw(-self.pgid), Signal::SIGKILL);
                    return End::Unconfirmed(1);
                }
            }
        }
    }
}

/// Arguments of the hidden `keel __guard` mode (started by [`Supervisor::spawn`] only).
#[derive(clap::Args)]
pub struct GuardArgs {
    /// Inherited read end of the control pipe.
    #[arg(long)]
    ctl: i32,
    /// Inherited write end of the status pipe.
    #[arg(long)]
    status: i32,
    /// The hold's deadline, `CLOCK_MONOTONIC` nanoseconds.
    #[arg(long)]
    deadline_ns: u64,
    /// SIGTERM this many nanoseconds before the deadline.
    #[arg(long)]
    term_before_ns: u64,
    /// SIGKILL this many nanoseconds before the deadline.
    #[arg(long)]
    kill_before_ns: u64,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// Takes over an inherited pipe end: opens it again through `/proc/self/fd` (close-on-exec,
/// non-blocking, owned) and closes the inherited descriptor, so the command never gets it.
fn adopt(fd: i32, write: bool) -> std::io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(OFlag::O_NONBLOCK.bits())
        .open(format!("/proc/self/fd/{fd}"))?;
    let _ = nix::unistd::close(fd);
    Ok(file)
}

/// How long leftover members of the group get after the command itself exited.
const LEFTOVER_GRACE: Duration = Duration::from_secs(1);
/// How long the guard waits for a SIGKILLed group to vanish before it gives up.
const CONFIRM_FOR: Duration = Duration::from_secs(5);
/// The longest the guard sleeps between checks (reaping, signals, deadlines).
const TICK: Duration = Duration::from_millis(20);

fn status_code(status: WaitStatus) -> Option<(Pid, i32)> {
    match status {
        WaitStatus::Exited(pid, code) => Some((pid, code)),
        WaitStatus::Signaled(pid, signal, _) => Some((pid, 128 + signal as i32)),
        _ => None,
    }
}

/// Why the guard stopped the command, if it did.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cause {
    Request,
    Deadline,
    ParentGone,
}

/// The guard's state while the command runs.
struct Guard {
    status: File,
    pgid: Pid,
    deadline: u64,
    term_before: u64,
    kill_before: u64,
    /// Set once SIGTERM went out: why, and when SIGKILL was asked for.
    stopping: Option<(Cause, u64)>,
    /// When the first SIGKILL went out.
    killed_at: Option<u64>,
    code: Option<i32>,
    /// When the command's own process was reaped.
    reaped_at: Option<u64>,
}

impl Guard {
    fn say(&mut self, line: &str) {
        let _ = self.status.write_all(format!("{line}\n").as_bytes());
    }

    fn signal_group(&self, signal: Signal) {
        let _ = kill(Pid::from_raw(-self.pgid.as_raw()), signal);
    }

    fn kill_group(&mut self, now: u64) {
        self.signal_group(Signal::SIGKILL);
        self.killed_at.get_or_insert(now);
    }

    /// Whether any process is left in the command's group (a group we may not signal counts).
    fn group_alive(&self) -> bool {
        !matches!(
            kill(Pid::from_raw(-self.pgid.as_raw()), None),
            Err(Errno::ESRCH)
        )
    }

    /// The latest moment for SIGKILL: an eighth of the TTL before the deadline.
    fn latest_kill(&self) -> u64 {
        self.deadline.saturating_sub(self.kill_before)
    }

    /// When SIGKILL goes out, once stopping: as asked, but never after [`Guard::latest_kill`].
    fn kill_at(&self) -> Option<u64> {
        self.stopping
            .map(|(_, asked)| asked.min(self.latest_kill()))
    }

    fn begin_stop(&mut self, cause: Cause, kill_at: u64) {
        match &mut self.stopping {
            None => {
                self.signal_group(Signal::SIGTERM);
                self.stopping = Some((cause, kill_at));
            }
            Some((_, asked)) => *asked = (*asked).min(kill_at),
        }
    }

    /// Reaps every exited child (the command and adopted orphans).
    fn reap(&mut self, now: u64) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(status) => {
                    if let Some((pid, code)) = status_code(status)
                        && pid == self.pgid
                    {
                        self.code = Some(code);
                        self.reaped_at = Some(now);
                    }
                }
            }
        }
    }

    fn handle_line(&mut self, line: &str, now: u64) {
        match line.split_once(' ') {
            // Deadlines come only from successful renewals, so one may still move the kill
            // time of a requested stop (a shutdown grace) later; once the guard is stopping
            // the command because the deadline came, it finishes the job.
            Some(("deadline", ns)) => {
                if let Ok(ns) = ns.parse::<u64>()
                    && !matches!(
                        self.stopping,
                        Some((Cause::Deadline | Cause::ParentGone, _))
                    )
                {
                    self.deadline = ns;
                }
            }
            Some(("stop", grace)) => {
                let grace = grace.parse::<u64>().unwrap_or(0);
                self.begin_stop(Cause::Request, now.saturating_add(grace));
            }
            _ => {}
        }
    }

    /// One round of checks; returns the exit code once the guard is done.
    fn step(&mut self, now: u64, parent_alive: bool) -> Option<i32> {
        self.reap(now);
        if let Some(code) = self.code {
            if !self.group_alive() {
                let kind = match self.stopping {
                    Some((Cause::Deadline, _)) => "expired",
                    _ => "exited",
                };
                self.say(&format!("{kind} {code}"));
                return Some(code);
            }
            // The command is gone but left processes in its group: they must not outlive
            // the hold either.
            self.begin_stop(
                Cause::Request,
                now.saturating_add(duration_ns(LEFTOVER_GRACE)),
            );
        }
        if !parent_alive && !matches!(self.stopping, Some((Cause::ParentGone, _))) {
            self.stopping = Some((Cause::ParentGone, now));
        }
        if now >= self.deadline.saturating_sub(self.term_before) {
            self.begin_stop(Cause::Deadline, self.latest_kill());
        }
        if self.kill_at().is_some_and(|at| now >= at) {
            self.kill_group(now);
        }
        // A group that SIGKILL does not empty (a process stuck in the kernel) cannot be
        // confirmed gone: say so, and let the hold run out.
        if let Some(killed) = self.killed_at
            && now.saturating_sub(killed) > duration_ns(CONFIRM_FOR)
            && self.group_alive()
        {
            self.say(&format!("unconfirmed {}", self.code.unwrap_or(1)));
            return Some(self.code.unwrap_or(1));
        }
        None
    }

    /// How long to sleep before the next round: until the next signal is due, at most a tick.
    fn wait(&self, now: u64) -> Duration {
        let next = match self.kill_at() {
            Some(at) if now < at => at,
            Some(_) => now.saturating_add(duration_ns(TICK)),
            None => self.deadline.saturating_sub(self.term_before),
        };
        Duration::from_nanos(next.saturating_sub(now)).clamp(Duration::from_millis(1), TICK)
    }
}

/// The guard mode: runs the command and enforces the hold. Returns the command's exit code.
pub fn run(args: GuardArgs) -> i32 {
    // keel may die at any moment: a closed status pipe must not kill the guard (Rust already
    // ignores SIGPIPE; writes then fail and are ignored).
    let (Ok(mut ctl), Ok(status)) = (adopt(args.ctl, false), adopt(args.status, true)) else {
        return 1; // keel is already gone: start nothing
    };
    // Only keel decides when the command stops: a SIGTERM/SIGINT/SIGHUP meant for keel's
    // whole cgroup or session (systemd stop, `pkill keel`) must not kill the guard and skip
    // the grace. Blocked, not ignored, and unblocked again for the command (below).
    let mut blocked = nix::sys::signal::SigSet::empty();
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        blocked.add(sig);
    }
    let _ = blocked.thread_block();
    let _ = nix::sys::prctl::set_child_subreaper(true);
    let me = nix::unistd::getpid();
    let (program, rest) = args.command.split_first().expect("clap requires a command");
    let mut command = std::process::Command::new(program);
    command.args(rest).process_group(0);
    // SAFETY: the closure runs in the forked child before exec and only makes three raw
    // system calls (sigprocmask, prctl, getppid), all async-signal-safe; it allocates nothing
    // and touches no lock. It gives the command the signals the guard blocked, makes the
    // kernel SIGKILL the command when the guard dies, and refuses to exec if the guard died
    // before the prctl took effect.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(move || {
            blocked.thread_unblock()?;
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            if nix::unistd::getppid() != me {
                return Err(std::io::Error::from_raw_os_error(Errno::ESRCH as i32));
            }
            Ok(())
        });
    }
    let child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let mut status = status;
            let _ = status.write_all(format!("failed cannot run {program}: {e}\n").as_bytes());
            return 127;
        }
    };
    let pgid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    // The child is reaped with waitpid(-1) below, together with adopted orphans.
    drop(child);
    let mut guard = Guard {
        status,
        pgid,
        deadline: args.deadline_ns,
        term_before: args.term_before_ns,
        kill_before: args.kill_before_ns,
        stopping: None,
        killed_at: None,
        code: None,
        reaped_at: None,
    };
    guard.say(&format!("started {pgid}"));
    let mut parent_alive = true;
    let mut pending = Vec::new();
    loop {
        let now = mono_ns();
        if let Some(code) = guard.step(now, parent_alive) {
            return code;
        }
        let wait = guard.wait(now);
        if !parent_alive {
            std::thread::sleep(wait);
            continue;
        }
        let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::ZERO);
        let mut fds = [PollFd::new(ctl.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, timeout).unwrap_or(0) == 0 {
            continue;
        }
        let mut buf = [0u8; 512];
        match ctl.read(&mut buf) {
            Ok(0) => parent_alive = false,
            Ok(n) => {
                pending.extend_from_slice(&buf[..n]);
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    let line = String::from_utf8_lossy(&line[..end]).into_owned();
                    guard.handle_line(&line, mono_ns());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => parent_alive = false,
        }
    }
}

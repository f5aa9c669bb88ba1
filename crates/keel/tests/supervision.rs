//! The command never outlives the hold: `keel lock` and `keel elect` as real processes
//! against a real redis-server, under keel's own faults (keel SIGKILLed, keel SIGSTOPped for
//! four leases, the command SIGKILLed, a command that ignores SIGTERM) and a frozen Redis.
//!
//! Every command is a bash script that logs `<wall clock> <pid> start <token> <grandchild>`,
//! then a `beat` every 20 ms, from the command process itself; it also starts a grandchild
//! (`sleep 300 &`) in its group. At start it checks whether any earlier command or
//! grandchild is still alive and logs `alive <pid>` if so. The checks: no `alive` line, the
//! [start, last beat] intervals of all commands never overlap, fencing tokens increase, no
//! grandchild survives, and a new holder or leader takes over within the documented bound.
//! Each scenario runs [`REPS`] times.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keel_testkit::redis::{RedisServer, wait_until};

/// Repetitions of each scenario per run, so a race has several chances to show.
const REPS: usize = 5;
/// Process start-up and scheduling on a loaded 2-core machine, added to liveness bounds.
const SLACK: f64 = 4.0;
/// The longest a lock waiter sleeps between attempts (the poll cap).
const POLL_CAP: f64 = 0.5;

fn keel() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keel"))
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "keel-supervision-{tag}-{}-{}",
        std::process::id(),
        now()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The command: logs start (with the earlier commands' liveness), then beats every 20 ms,
/// `beats` times (forever if `None`).
fn script(log: &Path, ignore_term: bool, beats: Option<u32>) -> String {
    let log = log.display();
    let trap = if ignore_term { "trap '' TERM" } else { "" };
    let limit = beats.map_or_else(|| "1000000000".to_owned(), |b| b.to_string());
    format!(
        r#"{trap}
sleep 300 & gc=$!
for p in $(awk '$3=="start" {{print $2; print $5}}' {log} 2>/dev/null); do
  if kill -0 "$p" 2>/dev/null && [ "$(awk '{{print $3}}' /proc/$p/stat 2>/dev/null)" != Z ]; then
    echo "$EPOCHREALTIME $$ alive $p" >> {log}
  fi
done
echo "$EPOCHREALTIME $$ start $KEEL_FENCING_TOKEN $gc" >> {log}
n=0
while [ $n -lt {limit} ]; do echo "$EPOCHREALTIME $$ beat" >> {log}; sleep 0.02; n=$((n+1)); done
kill $gc
echo "$EPOCHREALTIME $$ end" >> {log}
"#
    )
}

/// One command's life as its own log lines show it.
#[derive(Debug, Clone)]
struct Life {
    pid: u32,
    start: f64,
    last: f64,
    token: u64,
    grandchild: u32,
}

struct Timeline {
    lives: Vec<Life>,
    alive_lines: Vec<String>,
    text: String,
}

impl Timeline {
    fn read(log: &Path) -> Self {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let mut lives: Vec<Life> = Vec::new();
        let mut alive_lines = Vec::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 3 {
                continue; // a line being written
            }
            let (Ok(t), Ok(pid)) = (f[0].parse::<f64>(), f[1].parse::<u32>()) else {
                continue;
            };
            match (f[2], f.len()) {
                ("start", 5) => lives.push(Life {
                    pid,
                    start: t,
                    last: t,
                    token: f[3].parse().unwrap(),
                    grandchild: f[4].parse().unwrap(),
                }),
                ("beat" | "end", _) => {
                    if let Some(l) = lives.iter_mut().find(|l| l.pid == pid) {
                        l.last = l.last.max(t);
                    }
                }
                ("alive", _) => alive_lines.push(line.to_owned()),
                _ => {}
            }
        }
        lives.sort_by(|a, b| a.start.total_cmp(&b.start));
        Self {
            lives,
            alive_lines,
            text,
        }
    }

    /// The invariant: never two commands at once, tokens increase, nobody saw an earlier
    /// command or grandchild alive when it started.
    fn assert_exclusive(&self, context: &str) {
        assert!(
            self.alive_lines.is_empty(),
            "{context}: a command started while an earlier one was alive: {:?}\n{}",
            self.alive_lines,
            self.tail()
        );
        for w in self.lives.windows(2) {
            assert!(
                w[0].last < w[1].start,
                "{context}: two commands at once: {:?} ran until {:.3} but {:?} started at {:.3}\n{}",
                w[0].pid,
                w[0].last,
                w[1].pid,
                w[1].start,
                self.tail()
            );
            assert!(
                w[1].token > w[0].token,
                "{context}: fencing tokens must increase: {:?} then {:?}",
                w[0],
                w[1]
            );
        }
    }

    fn tail(&self) -> String {
        let lines: Vec<&str> = self.text.lines().filter(|l| !l.contains(" beat")).collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn started_after(&self, t: f64) -> Option<Life> {
        self.lives.iter().find(|l| l.start > t).cloned()
    }
}

fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

fn wait_exit(child: &mut Child, timeout: Duration, what: &str) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            use std::os::unix::process::ExitStatusExt;
            return status.code().or_else(|| status.signal().map(|s| 128 + s));
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not exit within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// keel processes of one repetition; SIGKILLed (their guards then kill the commands) when
/// dropped, so a failed assertion leaves nothing running.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn stderr_file(dir: &Path, name: &str) -> Stdio {
    Stdio::from(std::fs::File::create(dir.join(format!("{name}.err"))).unwrap())
}

fn stderr_of(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.err"))).unwrap_or_default()
}

/// What a fault did: when it acted (takeover is measured from there), and by when the first
/// command must have stopped beating (the earliest moment its hold could expire), if the
/// fault makes that bound meaningful.
struct Fault {
    at: f64,
    gone_by: Option<f64>,
}

impl Fault {
    fn at(at: f64) -> Self {
        Self { at, gone_by: None }
    }
}

/// The first command's last beat came no later than `fault.gone_by`.
fn assert_gone_by(timeline: &Timeline, first: &Life, fault: &Fault, context: &str) {
    let Some(by) = fault.gone_by else { return };
    let life = timeline.lives.iter().find(|l| l.pid == first.pid).unwrap();
    assert!(
        life.last <= by,
        "{context}: the command still ran {:.3} s after its hold could expire\n{}",
        life.last - by,
        timeline.tail()
    );
}

/// Freezes Redis (SIGSTOP) for three 1 s holds. No renewal succeeds after the freeze begins,
/// so the command must be gone before its hold could expire (freeze + TTL at the earliest);
/// takeover is measured from the resume.
fn frozen_redis(redis: &RedisServer) -> Fault {
    let at = now();
    redis.pause();
    std::thread::sleep(Duration::from_secs(3));
    let resumed = now();
    redis.resume();
    Fault {
        at: resumed,
        gone_by: Some(at + 1.0),
    }
}

/// SIGKILLs keel alone; its command and grandchild must die at once, long before the
/// guard's deadline-based kill (with a 6 s hold renewed every 2 s: at least 3.25 s later).
/// Returns the kill time.
fn killed_at_once(keel: &mut Child, first: &Life) -> Fault {
    let at = now();
    signal(keel.id(), "KILL");
    wait_until(
        "the orphaned command to die",
        Duration::from_secs(10),
        || dead(first.pid) && dead(first.grandchild),
    );
    let gone = now() - at;
    assert!(
        gone < 2.0,
        "the command died {gone:.3} s after keel, not at once"
    );
    let _ = keel.wait();
    Fault::at(at)
}

// ---------------------------------------------------------------------------------------
// keel lock

struct LockRun<'a> {
    redis: &'a RedisServer,
    dir: PathBuf,
    log: PathBuf,
    name: String,
    ttl: &'a str,
}

impl LockRun<'_> {
    fn spawn(&self, who: &str, ignore_term: bool, beats: Option<u32>, extra: &[&str]) -> Child {
        keel()
            .args(["lock", "--url", &self.redis.url(), &self.name])
            .args(["--ttl", self.ttl, "--wait", "30s", "--timeout", "1s"])
            .args(extra)
            .args(["--", "bash", "-c", &script(&self.log, ignore_term, beats)])
            .stdout(Stdio::null())
            .stderr(stderr_file(&self.dir, who))
            .spawn()
            .unwrap()
    }

    fn first_start(&self) -> Life {
        wait_until("the holder's command", Duration::from_secs(30), || {
            !Timeline::read(&self.log).lives.is_empty()
        });
        Timeline::read(&self.log).lives[0].clone()
    }
}

/// Runs `scenario` REPS times: a holder (runs until stopped) and a waiter (runs 10 beats);
/// `fault` acts on the holder and returns the moment it acted; `expect` checks the holder's
/// exit code; a waiter must take over within `bound` seconds of the fault.
fn lock_scenario(
    tag: &str,
    ttl: &str,
    ignore_term: bool,
    extra: &[&str],
    fault: impl Fn(&RedisServer, &mut Child, &Life) -> Fault,
    holder_code: i32,
    bound: f64,
) {
    let redis = RedisServer::start();
    let dir = tempdir(tag);
    for rep in 0..REPS {
        let run = LockRun {
            redis: &redis,
            dir: dir.clone(),
            log: dir.join(format!("{rep}.log")),
            name: format!("{tag}-{rep}"),
            ttl,
        };
        let holder = run.spawn(&format!("holder-{rep}"), ignore_term, None, extra);
        let mut procs = Procs(vec![holder]);
        let first = run.first_start();
        procs
            .0
            .push(run.spawn(&format!("waiter-{rep}"), false, Some(10), &[]));
        std::thread::sleep(Duration::from_millis(300)); // the waiter is polling by now
        let fault = fault(&redis, &mut procs.0[0], &first);
        let code = wait_exit(
            &mut procs.0[0],
            Duration::from_secs(20),
            "the holder's keel",
        );
        assert_eq!(
            code,
            Some(holder_code),
            "{tag} rep {rep}: holder's exit code; stderr:\n{}",
            stderr_of(&dir, &format!("holder-{rep}"))
        );
        let waiter = wait_exit(&mut procs.0[1], Duration::from_secs(30), "the waiter");
        assert_eq!(
            waiter,
            Some(0),
            "{tag} rep {rep}: waiter; stderr:\n{}",
            stderr_of(&dir, &format!("waiter-{rep}"))
        );
        let timeline = Timeline::read(&run.log);
        let context = format!("{tag} rep {rep}");
        timeline.assert_exclusive(&context);
        assert_gone_by(&timeline, &first, &fault, &context);
        assert_eq!(timeline.lives.len(), 2, "{context}\n{}", timeline.tail());
        assert!(dead(first.pid), "{context}: the holder's command survived");
        assert!(
            dead(first.grandchild),
            "{context}: the holder's grandchild survived"
        );
        let next = timeline.started_after(first.start).unwrap();
        assert!(
            next.start - fault.at <= bound,
            "{context}: took over {:.3} s after the fault (bound {bound} s)",
            next.start - fault.at
        );
    }
}

/// keel SIGKILLed alone (as the OOM killer does): its command's whole group dies at once;
/// the waiter gets the lock once the TTL ran out.
#[test]
fn lock_keel_killed_takes_its_command_with_it() {
    lock_scenario(
        "lock-kill",
        "6s",
        false,
        &[],
        |_, keel, first| killed_at_once(keel, first),
        137,
        6.0 + POLL_CAP + SLACK,
    );
}

/// keel frozen (SIGSTOP) for four TTLs with a command that ignores SIGTERM: the guard
/// SIGKILLs it before the lock can expire; keel, continued, exits 75 and touches nothing.
#[test]
fn lock_keel_frozen_command_is_stopped_before_the_lock_expires() {
    lock_scenario(
        "lock-stop",
        "1s",
        true,
        &[],
        |_, keel, _| {
            let at = now();
            signal(keel.id(), "STOP");
            std::thread::sleep(Duration::from_secs(4));
            signal(keel.id(), "CONT");
            // The last renewal was sent before the freeze: the lock can expire from
            // at + TTL on, and the command must be gone by then.
            Fault {
                at,
                gone_by: Some(at + 1.0),
            }
        },
        75,
        1.0 + POLL_CAP + SLACK,
    );
}

/// The command SIGKILLed: keel sees it (and its leftover grandchild) gone, exits 137 and
/// releases at once, so the waiter gets the lock long before the 15 s TTL.
#[test]
fn lock_command_killed_releases_after_its_group_is_gone() {
    lock_scenario(
        "lock-cmdkill",
        "15s",
        false,
        &[],
        |_, _, first| {
            let at = now();
            signal(first.pid, "KILL");
            Fault::at(at)
        },
        137,
        POLL_CAP + SLACK,
    );
}

/// keel asked to stop (SIGTERM) while its command ignores SIGTERM: SIGKILL after the grace,
/// then release; the waiter gets the lock long before the 15 s TTL.
#[test]
fn lock_command_ignoring_sigterm_is_killed_after_the_grace() {
    lock_scenario(
        "lock-ignore",
        "15s",
        true,
        &["--grace", "500ms"],
        |_, keel, _| {
            let at = now();
            signal(keel.id(), "TERM");
            Fault::at(at)
        },
        137,
        0.5 + POLL_CAP + SLACK,
    );
}

/// Redis frozen for three TTLs: renewals fail, the command is stopped before the lock can
/// expire, keel exits 75; the waiter (riding out the timeouts) gets the lock after Redis is
/// back.
#[test]
fn lock_redis_frozen_stops_the_command_before_the_lock_expires() {
    lock_scenario(
        "lock-redis",
        "1s",
        false,
        &[],
        |redis, _, _| frozen_redis(redis),
        75,
        POLL_CAP + SLACK,
    );
}

// ---------------------------------------------------------------------------------------
// keel elect

struct Candidate {
    name: String,
    keel: Child,
}

impl Drop for Candidate {
    fn drop(&mut self) {
        // keel goes; its guard then kills the command.
        let _ = self.keel.kill();
        let _ = self.keel.wait();
    }
}

fn candidates(
    redis: &RedisServer,
    dir: &Path,
    log: &Path,
    election: &str,
    lease: &str,
    ignore_term: bool,
    extra: &[&str],
) -> Vec<Candidate> {
    ["a", "b"]
        .iter()
        .map(|id| {
            let name = format!("{election}-{id}");
            let keel = keel()
                .args(["elect", "--url", &redis.url(), election])
                .args(["--lease", lease, "--identity", &name, "--timeout", "1s"])
                .args(extra)
                .args(["--", "bash", "-c", &script(log, ignore_term, None)])
                .stdout(Stdio::null())
                .stderr(stderr_file(dir, &name))
                .spawn()
                .unwrap();
            Candidate { name, keel }
        })
        .collect()
}

/// Which candidate's keel runs the command with pid `pid`.
fn leader_of(candidates: &[Candidate], pid: u32) -> usize {
    let ppid = |p: u32| -> u32 {
        std::fs::read_to_string(format!("/proc/{p}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, r)| r.split_whitespace().nth(1).map(str::to_owned))
            })
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    };
    // keel -> guard -> command; walk up a few levels so the check does not depend on it.
    let mut ancestor = pid;
    for _ in 0..3 {
        ancestor = ppid(ancestor);
        if let Some(i) = candidates.iter().position(|c| c.keel.id() == ancestor) {
            return i;
        }
    }
    panic!("command {pid} runs under no candidate's keel")
}

/// Runs an election scenario REPS times with two candidates: `fault` acts on the leader
/// (its index in `candidates`) and returns the moment it acted; another command (of either
/// candidate) must start within `bound` seconds, and nothing may overlap, also for
/// `observe` after the takeover.
fn elect_scenario(
    tag: &str,
    lease: &str,
    ignore_term: bool,
    extra: &[&str],
    fault: impl Fn(&RedisServer, &mut [Candidate], usize, &Life) -> Fault,
    bound: f64,
) {
    let redis = RedisServer::start();
    let dir = tempdir(tag);
    for rep in 0..REPS {
        let log = dir.join(format!("{rep}.log"));
        let election = format!("{tag}-{rep}");
        let mut cands = candidates(&redis, &dir, &log, &election, lease, ignore_term, extra);
        let context = format!("{tag} rep {rep}");
        wait_until("a leader's command", Duration::from_secs(30), || {
            !Timeline::read(&log).lives.is_empty()
        });
        std::thread::sleep(Duration::from_millis(300));
        let timeline = Timeline::read(&log);
        assert_eq!(
            timeline.lives.len(),
            1,
            "{context}: one leader\n{}",
            timeline.tail()
        );
        let first = timeline.lives[0].clone();
        let leader = leader_of(&cands, first.pid);
        let fault = fault(&redis, &mut cands, leader, &first);
        wait_until("the next leader's command", Duration::from_secs(30), || {
            Timeline::read(&log).started_after(first.start).is_some()
        });
        // Watch a little longer: the old leader (continued, reconnected) must not run too.
        std::thread::sleep(Duration::from_millis(1500));
        let timeline = Timeline::read(&log);
        let errs = || {
            cands
                .iter()
                .map(|c| format!("--- {}:\n{}", c.name, stderr_of(&dir, &c.name)))
                .collect::<Vec<_>>()
                .join("\n")
        };
        if std::panic::catch_unwind(|| {
            timeline.assert_exclusive(&context);
            assert_gone_by(&timeline, &first, &fault, &context);
        })
        .is_err()
        {
            panic!("{context}: see above; keel stderr:\n{}", errs());
        }
        assert!(
            dead(first.pid),
            "{context}: the old leader's command survived"
        );
        assert!(
            dead(first.grandchild),
            "{context}: the old leader's grandchild survived"
        );
        let next = timeline.started_after(first.start).unwrap();
        assert!(
            next.start - fault.at <= bound,
            "{context}: a new leader after {:.3} s (bound {bound} s)\n{}",
            next.start - fault.at,
            errs()
        );
        drop(cands);
    }
}

/// The leader's keel SIGKILLed: its command dies at once; the other candidate leads once the
/// lease ran out (lease + a retry period with jitter).
#[test]
fn elect_keel_killed_takes_its_command_with_it() {
    elect_scenario(
        "elect-kill",
        "6s",
        false,
        &[],
        |_, cands, leader, first| killed_at_once(&mut cands[leader].keel, first),
        6.0 + 1.0 * 1.2 + SLACK,
    );
}

/// The leader's keel frozen for four leases (its command ignores SIGTERM): the guard kills
/// the command before the lease can expire; the other candidate leads; the old keel,
/// continued, does not run its command while the other leads.
#[test]
fn elect_keel_frozen_never_gives_two_leaders() {
    elect_scenario(
        "elect-stop",
        "1s",
        true,
        &[],
        |_, cands, leader, _| {
            let at = now();
            signal(cands[leader].keel.id(), "STOP");
            std::thread::sleep(Duration::from_secs(4));
            signal(cands[leader].keel.id(), "CONT");
            Fault {
                at,
                gone_by: Some(at + 1.0),
            }
        },
        1.0 + 1.0 / 6.0 * 1.2 + SLACK,
    );
}

/// The leader's command SIGKILLed: its keel resigns after the group is gone and releases at
/// once; a new term starts within a retry period (2.5 s), long before the 15 s lease.
#[test]
fn elect_command_killed_hands_over_after_its_group_is_gone() {
    elect_scenario(
        "elect-cmdkill",
        "15s",
        false,
        &[],
        |_, _, _, first| {
            let at = now();
            signal(first.pid, "KILL");
            Fault::at(at)
        },
        2.5 * 1.2 + SLACK,
    );
}

/// The leader's keel asked to stop (SIGTERM) while its command ignores SIGTERM: SIGKILL after
/// the grace, then the lease is released and the other candidate leads within a retry
/// period, long before the 15 s lease.
#[test]
fn elect_command_ignoring_sigterm_is_killed_after_the_grace() {
    elect_scenario(
        "elect-ignore",
        "15s",
        true,
        &["--grace", "500ms"],
        |_, cands, leader, _| {
            let at = now();
            signal(cands[leader].keel.id(), "TERM");
            let code = wait_exit(&mut cands[leader].keel, Duration::from_secs(10), "keel");
            assert_eq!(code, Some(0), "keel elect exits 0 on SIGTERM");
            Fault::at(at)
        },
        0.5 + 2.5 * 1.2 + SLACK,
    );
}

/// Redis frozen for three leases: the leader steps down and its command is gone before the
/// lease can expire; after Redis is back, a leader is elected.
#[test]
fn elect_redis_frozen_stops_the_command_before_the_lease_expires() {
    elect_scenario(
        "elect-redis",
        "1s",
        false,
        &[],
        |redis, _, _, _| frozen_redis(redis),
        1.0 + SLACK,
    );
}

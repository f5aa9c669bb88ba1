//! `keel lock` and `keel elect` as real processes against a real redis-server.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keel_testkit::redis::{RedisServer, wait_until};

fn keel() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keel"))
}

#[test]
fn lock_runs_the_command_with_a_fencing_token_and_passes_its_exit_code() {
    let redis = RedisServer::start();
    let url = redis.url();
    let out = keel()
        .args(["lock", "--url", &url, "job", "--ttl", "2s", "--"])
        .args(["sh", "-c", "echo token=$KEEL_FENCING_TOKEN; exit 7"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The first token on an empty server is seeded from the server's clock (microseconds),
    // so it is not 1: only its increase is asserted.
    let first: u64 = stdout
        .strip_prefix("token=")
        .and_then(|t| t.trim_end().parse().ok())
        .unwrap_or_else(|| panic!("no token in {stdout:?}"));
    let again = keel()
        .args([
            "lock",
            "--url",
            &url,
            "job",
            "--",
            "sh",
            "-c",
            "echo $KEEL_FENCING_TOKEN",
        ])
        .output()
        .unwrap();
    assert!(again.status.success());
    assert_eq!(
        String::from_utf8_lossy(&again.stdout),
        format!("{}\n", first + 1),
        "tokens increase"
    );
    assert_eq!(
        redis.cli(&["EXISTS", "__keel_lock:keel:{job}"]),
        "0",
        "released after the command"
    );
}

#[test]
fn a_held_lock_makes_the_second_caller_wait_and_give_up() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut holder = keel()
        .args([
            "lock", "--url", &url, "job", "--ttl", "1s", "--", "sleep", "3",
        ])
        .spawn()
        .unwrap();
    wait_until("the first holder", Duration::from_secs(5), || {
        redis.cli(&["EXISTS", "__keel_lock:keel:{job}"]) == "1"
    });
    let start = Instant::now();
    let second = keel()
        .args([
            "lock", "--url", &url, "job", "--wait", "500ms", "--", "true",
        ])
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("still held"));
    assert!(start.elapsed() >= Duration::from_millis(500));
    assert!(
        holder.wait().unwrap().success(),
        "the watchdog kept the 1 s lock for 3 s"
    );
}

#[test]
fn a_lost_lock_terminates_the_command_and_exits_75() {
    let redis = RedisServer::start();
    let dir = tempdir();
    let marker = dir.join("term");
    let grandchild = dir.join("grandchild");
    // A grandchild that does nothing special: it must die with the command's group.
    let script = format!(
        "sleep 60 & echo $! > {}; trap 'echo got-term > {}; exit 0' TERM; sleep 30 & wait",
        grandchild.display(),
        marker.display()
    );
    let mut child = keel()
        .args([
            "lock",
            "--url",
            &redis.url(),
            "job",
            "--ttl",
            "2s",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the lock", Duration::from_secs(5), || {
        redis.cli(&["EXISTS", "__keel_lock:keel:{job}"]) == "1"
    });
    // Someone (an operator, a bug, an expiry during a pause) takes the lock away.
    redis.cli(&["SET", "__keel_lock:keel:{job}", "someone-else"]);
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert_eq!(status, Some(75));
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "got-term");
    let pid = std::fs::read_to_string(&grandchild)
        .unwrap()
        .trim()
        .to_owned();
    wait_until(
        "the grandchild to be stopped with the group",
        Duration::from_secs(5),
        || {
            !Command::new("kill")
                .args(["-0", &pid])
                .status()
                .unwrap()
                .success()
        },
    );
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "keel-coord-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    let dir = dir.join(format!("{:?}", std::thread::current().id()).replace(['(', ')'], ""));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `start <identity> <epoch>` and `stop <identity>` lines appended by each leader's command.
fn leader_script(log: &Path, id: &str) -> String {
    format!(
        "echo start {id} $KEEL_FENCING_TOKEN >> {log}; trap 'echo stop {id} >> {log}; exit 0' TERM; \
         while true; do sleep 0.05; done",
        log = log.display()
    )
}

struct Candidate {
    id: String,
    keel: Child,
}

impl Drop for Candidate {
    fn drop(&mut self) {
        kill_tree(self.keel.id());
        let _ = self.keel.wait();
    }
}

fn kill_tree(pid: u32) {
    // The command runs as keel's child: kill it too, as a crash of the whole node would.
    // keel goes first, so it cannot see its command die and resign cleanly.
    let children = Command::new("pgrep")
        .args(["-P", &pid.to_string()])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    for child in children.split_whitespace() {
        let _ = Command::new("kill").args(["-KILL", child]).status();
    }
}

fn current_leaders(log: &Path) -> Vec<(String, u64)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut running: Vec<(String, u64)> = Vec::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["start", id, epoch] => running.push(((*id).to_owned(), epoch.parse().unwrap())),
            ["stop", id] => running.retain(|(r, _)| r != id),
            _ => {}
        }
    }
    running
}

#[test]
fn elect_runs_one_leader_and_fails_over_when_it_is_killed() {
    let redis = RedisServer::start();
    let dir = tempdir();
    let log = dir.join("leaders");
    let mut candidates: Vec<Candidate> = (0..3)
        .map(|i| {
            let id = format!("node-{i}");
            let keel = keel()
                .args([
                    "elect",
                    "--url",
                    &redis.url(),
                    "boss",
                    "--lease",
                    "1500ms",
                    "--identity",
                    &id,
                ])
                .args(["--", "sh", "-c", &leader_script(&log, &id)])
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            Candidate { id, keel }
        })
        .collect();
    wait_until("a leader", Duration::from_secs(10), || {
        current_leaders(&log).len() == 1
    });
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            current_leaders(&log).len() <= 1,
            "two commands running at once"
        );
    }
    let (leader, first_epoch) = current_leaders(&log)[0].clone();
    let idx = candidates.iter().position(|c| c.id == leader).unwrap();
    let killed = candidates.remove(idx);
    let killed_at = Instant::now();
    drop(killed); // SIGKILL keel and its command: no release, no stop line
    // The dead leader's command never logged "stop"; forget it.
    let others = |log: &Path| -> Vec<(String, u64)> {
        current_leaders(log)
            .into_iter()
            .filter(|(id, _)| *id != leader)
            .collect()
    };
    wait_until("a new leader", Duration::from_secs(10), || {
        others(&log).len() == 1
    });
    let failover = killed_at.elapsed();
    let (new_leader, epoch) = others(&log)[0].clone();
    assert_ne!(new_leader, leader);
    assert!(epoch > first_epoch, "epoch {epoch} after {first_epoch}");
    // Lease 1.5 s + retry period 250 ms (+ jitter and process start-up).
    // The last renewal was at most one retry period (250 ms) before the kill.
    assert!(
        failover >= Duration::from_secs(1),
        "took over before the lease could expire: {failover:?}"
    );
    assert!(failover < Duration::from_secs(10), "{failover:?}");
}

/// The guard blocks SIGTERM/SIGINT/SIGHUP for itself (a `systemctl stop` or `pkill keel`
/// reaches every process, and only keel decides how the command stops), but the command
/// starts with none blocked, and a SIGTERM sent to the guard alone changes nothing.
#[test]
fn the_guard_ignores_stray_sigterm_and_the_command_gets_a_clean_signal_mask() {
    let redis = RedisServer::start();
    let dir = tempdir();
    let out_file = dir.join("mask");
    let mut child = keel()
        .args(["lock", "--url", &redis.url(), "mask", "--"])
        .args([
            "sh",
            "-c",
            &format!(
                "grep SigBlk /proc/self/status > {}; sleep 1",
                out_file.display()
            ),
        ])
        .spawn()
        .unwrap();
    wait_until("the command", Duration::from_secs(5), || {
        std::fs::read_to_string(&out_file).is_ok_and(|s| s.ends_with('\n'))
    });
    let guard = Command::new("pgrep")
        .args(["-P", &child.id().to_string(), "-f", "__guard"])
        .output()
        .unwrap();
    let guard = String::from_utf8_lossy(&guard.stdout).trim().to_owned();
    assert!(!guard.is_empty(), "the guard runs as keel's child");
    assert!(
        Command::new("kill")
            .args(["-TERM", &guard])
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(10)),
        Some(0),
        "the command ran to its end"
    );
    let mask = std::fs::read_to_string(&out_file).unwrap();
    assert_eq!(
        mask.split_whitespace().nth(1),
        Some("0000000000000000"),
        "{mask}"
    );
}

/// An upgrade replaces (here: deletes) the keel binary while `keel elect` runs: the next
/// term still starts its guard, from `/proc/self/exe` (the path would name nothing now).
#[test]
fn a_new_term_starts_after_the_binary_was_replaced() {
    let redis = RedisServer::start();
    let dir = tempdir();
    let binary = dir.join("keel-old");
    std::fs::copy(env!("CARGO_BIN_EXE_keel"), &binary).unwrap();
    let runs = dir.join("runs");
    let script = format!(
        "echo run >> {runs}; rm -f {binary}; sleep 0.2",
        runs = runs.display(),
        binary = binary.display()
    );
    let mut child = Command::new(&binary)
        .args([
            "elect",
            "--url",
            &redis.url(),
            "upgrade",
            "--lease",
            "1500ms",
        ])
        .args(["--", "sh", "-c", &script])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(
        "a second term after the binary was removed",
        Duration::from_secs(15),
        || std::fs::read_to_string(&runs).is_ok_and(|r| r.lines().count() >= 2),
    );
    assert!(!binary.exists());
    let _ = child.kill();
    let _ = child.wait();
}

/// `keel lock --permits 2`: six commands started at once never run more than two at a time
/// (each records its own start and end), every one runs, and the permits are given back.
#[test]
fn permits_bound_how_many_commands_run_at_once() {
    let redis = RedisServer::start();
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "echo s $(date +%s%N) >> {d}/$KEEL_FENCING_TOKEN; sleep 0.3; echo e $(date +%s%N) >> {d}/$KEEL_FENCING_TOKEN",
        d = dir.path().display()
    );
    let children: Vec<Child> = (0..6)
        .map(|_| {
            keel()
                .args([
                    "lock",
                    "--url",
                    &url,
                    "pool",
                    "--permits",
                    "2",
                    "--ttl",
                    "3s",
                ])
                .args(["--wait", "120s", "--", "sh", "-c", &script])
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let mut events = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines() {
            let (kind, at) = line.split_once(' ').unwrap();
            let at: u128 = at.trim().parse().unwrap();
            events.push((at, if kind == "s" { 1 } else { -1 }));
        }
    }
    assert_eq!(
        events.len(),
        12,
        "six commands ran, each with its own fencing token"
    );
    events.sort();
    let (mut now, mut max) = (0, 0);
    for (_, d) in events {
        now += d;
        max = max.max(now);
    }
    assert!(max <= 2, "{max} commands ran at once with --permits 2");
    assert_eq!(
        redis.cli(&["ZCARD", "__keel_sem:keel:{pool}"]),
        "0",
        "permits given back"
    );
}

/// Bad input to `--permits` is refused with a clear message before anything runs.
#[test]
fn zero_permits_and_braces_are_refused() {
    let redis = RedisServer::start();
    let url = redis.url();
    for (name, permits, expect) in [("pool", "0", "permit count"), ("a{b}", "2", "'{'")] {
        let out = keel()
            .args([
                "lock",
                "--url",
                &url,
                name,
                "--permits",
                permits,
                "--",
                "true",
            ])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{err}");
    }
}

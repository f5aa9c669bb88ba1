//! Linearizability of single-key operations: two threads race a pair of operations on one key,
//! and every outcome (both results and the final state) must be what one of the two serial
//! orders would give.
//!
//! The operations are the writes and read-modify-writes of the contract: `set`, `delete`,
//! `expire`, `incr_by`, `set_nx`, `set_if_match`, and the batches `set_many` / `delete_many`
//! (each over the raced key and a second key). Every pair, both operations of a pair started at
//! the same instant (a spinning barrier), from each of three starting states (absent, a
//! persistent value, a value with a TTL), for many rounds. Each round uses fresh keys and
//! deletes them afterwards.
//!
//! [`clear_races_are_linearizable`] races `clear` against each of those operations (and
//! itself) the same way; per key, `clear` is one more write (the key is gone after it).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use keel_cache::{Cache, CacheKind, KeyTtl, Ttl};

use super::{Factory, cache};

/// Long enough never to pass during a round: an expiring value's state is just "expiring".
const TTL: Duration = Duration::from_secs(600);

/// One key's state in the model: its value and whether it has a TTL.
type Slot = Option<(Bytes, bool)>;

/// The raced key and the batches' second key.
#[derive(Clone, Debug, PartialEq, Eq)]
struct State {
    key: Slot,
    other: Slot,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Set,
    Delete,
    Expire,
    Incr,
    SetNx,
    Cas,
    SetMany,
    DeleteMany,
    Clear,
}

const OPS: [Op; 8] = [
    Op::Set,
    Op::Delete,
    Op::Expire,
    Op::Incr,
    Op::SetNx,
    Op::Cas,
    Op::SetMany,
    Op::DeleteMany,
];

/// What an operation returned (an error as its message: none is expected, all values are
/// integers).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Done,
    Flag(bool),
    Number(i64),
    Error(String),
}

const INITIAL: &[u8] = b"10";

fn value(op: Op) -> Bytes {
    Bytes::from_static(match op {
        Op::Set => b"20",
        Op::SetNx => b"30",
        Op::Cas => b"40",
        _ => b"50",
    })
}

impl Op {
    /// Whether the operation touches the second key too (the batches).
    fn is_batch(self) -> bool {
        matches!(self, Op::SetMany | Op::DeleteMany | Op::Clear)
    }

    /// The operation's effect on one key of the model, and what that key contributes to its
    /// result (for a batch, its share: `1` if `delete_many` removed it).
    fn step(self, slot: &Slot) -> (Slot, Outcome) {
        match self {
            Op::Set => (Some((value(self), false)), Outcome::Done),
            Op::Delete => (None, Outcome::Flag(slot.is_some())),
            Op::Expire => (
                slot.clone().map(|(v, _)| (v, true)),
                Outcome::Flag(slot.is_some()),
            ),
            Op::Incr => {
                let (old, ttl) = slot
                    .as_ref()
                    .map_or((0, false), |(v, ttl)| (parse(v), *ttl));
                let n = old + 1;
                (Some((Bytes::from(n.to_string()), ttl)), Outcome::Number(n))
            }
            Op::SetNx if slot.is_none() => (Some((value(self), false)), Outcome::Flag(true)),
            Op::Cas if slot.as_ref().is_some_and(|(v, _)| v == INITIAL) => {
                (Some((value(self), false)), Outcome::Flag(true))
            }
            Op::SetNx | Op::Cas => (slot.clone(), Outcome::Flag(false)),
            Op::SetMany => (Some((value(self), false)), Outcome::Done),
            Op::DeleteMany => (None, Outcome::Number(i64::from(slot.is_some()))),
            Op::Clear => (None, Outcome::Done),
        }
    }

    /// Joins the raced key's and the second key's shares of a result.
    fn join(self, key: Outcome, other: Option<Outcome>) -> Outcome {
        match (self, key, other) {
            (Op::DeleteMany, Outcome::Number(a), Some(Outcome::Number(b))) => {
                Outcome::Number(a + b)
            }
            (_, key, _) => key,
        }
    }
}

/// The results and final state when the raced key sees `a` then `b` (or `b` then `a` when
/// `key_swapped`), and the second key likewise by `other_swapped`. Batches are atomic per key,
/// not across keys (a Cluster writes each key on its own master), so the two keys' orders are
/// chosen independently.
fn serial(
    a: Op,
    b: Op,
    init: &State,
    key_swapped: bool,
    other_swapped: bool,
) -> (Outcome, Outcome, State) {
    let run = |slot: &Slot, swapped: bool, touched: fn(Op) -> bool| {
        let (first, second) = if swapped { (b, a) } else { (a, b) };
        let mut slot = slot.clone();
        let mut parts = [None, None];
        for (i, op) in [
            (usize::from(swapped), first),
            (usize::from(!swapped), second),
        ] {
            if touched(op) {
                let (next, part) = op.step(&slot);
                slot = next;
                parts[i] = Some(part);
            }
        }
        (slot, parts)
    };
    let (key, [ka, kb]) = run(&init.key, key_swapped, |_| true);
    let (other, [oa, ob]) = run(&init.other, other_swapped, Op::is_batch);
    let out_a = a.join(ka.unwrap_or(Outcome::Done), oa);
    let out_b = b.join(kb.unwrap_or(Outcome::Done), ob);
    (out_a, out_b, State { key, other })
}

impl Op {
    async fn run(self, c: &dyn Cache, key: &str, other: &str) -> Outcome {
        let flag = |r: keel_cache::Result<bool>| {
            r.map_or_else(|e| Outcome::Error(e.to_string()), Outcome::Flag)
        };
        let v = value(self);
        match self {
            Op::Set => done(c.set(key, v, Ttl::Never).await),
            Op::Delete => flag(c.delete(key).await),
            Op::Expire => flag(c.expire(key, Ttl::After(TTL)).await),
            Op::Incr => number(c.incr_by(key, 1).await),
            Op::SetNx => flag(c.set_nx(key, v, Ttl::Never).await),
            Op::Cas => flag(c.set_if_match(key, v, INITIAL, Ttl::Never).await),
            Op::SetMany => done(
                c.set_many(&[(key, v.clone()), (other, v)], Ttl::Never)
                    .await,
            ),
            Op::DeleteMany => match c.delete_many(&[key, other]).await {
                Ok(n) => Outcome::Number(i64::try_from(n).unwrap_or(i64::MAX)),
                Err(e) => Outcome::Error(e.to_string()),
            },
            Op::Clear => done(c.clear().await),
        }
    }
}

fn done(r: keel_cache::Result<()>) -> Outcome {
    r.map_or_else(|e| Outcome::Error(e.to_string()), |()| Outcome::Done)
}

fn number(r: keel_cache::Result<i64>) -> Outcome {
    r.map_or_else(|e| Outcome::Error(e.to_string()), Outcome::Number)
}

fn parse(v: &[u8]) -> i64 {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(i64::MIN)
}

/// The three starting states of the raced key (the second key starts absent and, on every
/// other round, with a value).
fn initial(which: usize, other: bool) -> State {
    let other = other.then(|| (Bytes::from_static(INITIAL), false));
    let key = match which {
        0 => None,
        1 => Some((Bytes::from_static(INITIAL), false)),
        _ => Some((Bytes::from_static(INITIAL), true)),
    };
    State { key, other }
}

async fn write(c: &dyn Cache, key: &str, slot: &Slot) {
    if let Some((v, ttl)) = slot {
        let ttl = if *ttl { Ttl::After(TTL) } else { Ttl::Never };
        c.set(key, v.clone(), ttl).await.unwrap();
    }
}

async fn read(c: &dyn Cache, key: &str) -> Slot {
    let v = c.get(key).await.unwrap()?;
    let ttl = match c.ttl(key).await.unwrap() {
        KeyTtl::Expires(_) => true,
        KeyTtl::Persistent => false,
        KeyTtl::Missing => panic!("{key}: get found a value, ttl says missing"),
    };
    Some((v, ttl))
}

/// Two threads meet here before each operation: they spin (yielding now and then, the machine
/// may have fewer free cores than threads), so both start within a few hundred nanoseconds.
struct SpinBarrier {
    arrived: AtomicUsize,
    generation: AtomicUsize,
}

impl SpinBarrier {
    fn new() -> Self {
        Self {
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
        }
    }

    fn wait(&self) {
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) == 1 {
            self.arrived.store(0, Ordering::Release);
            self.generation.fetch_add(1, Ordering::AcqRel);
            return;
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == generation {
            spins += 1;
            if spins.is_multiple_of(256) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

/// How long a race test keeps adding rounds past [`MIN_ROUNDS`] per (pair, starting state):
/// well inside the conformance deadline even on a loaded 2-core machine.
const RACE_BUDGET: std::time::Duration = std::time::Duration::from_secs(20);

/// Rounds per (pair, starting state) that always run, whatever the time budget.
const MIN_ROUNDS: usize = 10;

/// Rounds per (pair, starting state): an in-process backend can afford many more than a
/// networked one, and needs them (its race windows are nanoseconds wide).
fn rounds(kind: CacheKind) -> usize {
    match kind {
        CacheKind::Memory => 400,
        _ => 20,
    }
}

/// Every pair of single-key writes (batches included) raced from two threads, many rounds:
/// each round's two results and final state match one of the two serial orders.
pub async fn single_key_races_are_linearizable(f: &impl Factory) {
    let mut pairs = Vec::new();
    for (i, &a) in OPS.iter().enumerate() {
        for &b in &OPS[i..] {
            pairs.push((a, b));
        }
    }
    race_pairs(f, &pairs, 1).await;
}

/// `clear` raced against every single-key write (and against itself) from two threads, many
/// rounds: a read-modify-write that read a key before the `clear` never writes it back after
/// it, and each round matches one of the serial orders. Not part of [`cache_conformance!`]:
/// see [`NOT_IN_SUITE`](super::NOT_IN_SUITE) for why.
///
/// [`cache_conformance!`]: crate::cache_conformance
pub async fn clear_races_are_linearizable(f: &impl Factory) {
    let mut pairs: Vec<(Op, Op)> = OPS.iter().map(|&b| (Op::Clear, b)).collect();
    pairs.push((Op::Clear, Op::Clear));
    // Fewer pairs than the single-key test, so more rounds each: the window (between a
    // read-modify-write's read and its write) is nanoseconds wide in process.
    race_pairs(f, &pairs, 5).await;
}

async fn race_pairs(f: &impl Factory, pairs: &[(Op, Op)], rounds_factor: usize) {
    let c = cache(f).await;
    let rounds = rounds(c.kind()) * rounds_factor;
    // Rounds outermost, so that a run cut short by the time budget has covered every pair
    // and starting state about equally.
    let mut plan = Vec::new();
    for r in 0..rounds {
        for &(a, b) in pairs {
            for start in 0..3 {
                plan.push((a, b, start, r % 2 == 1));
            }
        }
    }
    let min_rounds = pairs.len() * 3 * MIN_ROUNDS;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let plan = Arc::new(plan);
    let barrier = Arc::new(SpinBarrier::new());
    let second: Arc<Mutex<Option<Outcome>>> = Arc::default();
    let handle = tokio::runtime::Handle::current();
    let follower = {
        let (c, plan, barrier, second, handle, stop) = (
            c.clone(),
            plan.clone(),
            barrier.clone(),
            second.clone(),
            handle.clone(),
            stop.clone(),
        );
        tokio::task::spawn_blocking(move || {
            for (n, &(_, b, _, _)) in plan.iter().enumerate() {
                let (key, other) = (format!("race{n}"), format!("race{n}:other"));
                barrier.wait(); // set up
                let out = handle.block_on(b.run(&*c, &key, &other));
                *second.lock().unwrap() = Some(out);
                barrier.wait(); // both done
                barrier.wait(); // checked
                if stop.load(Ordering::Acquire) {
                    break;
                }
            }
        })
    };
    let began = std::time::Instant::now();
    let leader = tokio::task::spawn_blocking(move || {
        let mut violations = Vec::new();
        let mut ran = 0;
        for (n, &(a, b, start, other_set)) in plan.iter().enumerate() {
            let (key, other) = (format!("race{n}"), format!("race{n}:other"));
            let init = initial(start, other_set);
            handle.block_on(async {
                write(&*c, &key, &init.key).await;
                write(&*c, &other, &init.other).await;
            });
            barrier.wait();
            let out_a = handle.block_on(a.run(&*c, &key, &other));
            barrier.wait();
            let out_b = second.lock().unwrap().take().unwrap();
            let seen = handle.block_on(async {
                let seen = State {
                    key: read(&*c, &key).await,
                    other: read(&*c, &other).await,
                };
                c.delete_many(&[&key, &other]).await.unwrap();
                seen
            });
            ran = n + 1;
            // A loaded machine (spinning threads that are not scheduled) makes rounds slow:
            // past the budget, stop once the minimum is done rather than hit the deadline.
            if ran >= min_rounds && began.elapsed() > RACE_BUDGET {
                stop.store(true, Ordering::Release);
            }
            barrier.wait();
            let orders = [(false, false), (false, true), (true, false), (true, true)]
                .map(|(k, o)| serial(a, b, &init, k, o));
            let serial = orders
                .iter()
                .any(|(ra, rb, state)| *ra == out_a && *rb == out_b && *state == seen);
            if !serial {
                violations.push(format!(
                    "{a:?} || {b:?} from {init:?}: got {out_a:?}, {out_b:?}, final {seen:?}; \
                     serial orders give {orders:?}"
                ));
            }
            if stop.load(Ordering::Acquire) {
                break;
            }
        }
        (violations, ran)
    });
    follower.await.unwrap();
    let (violations, total) = leader.await.unwrap();
    // One example per pair of operations that went wrong.
    let mut examples: Vec<&String> = Vec::new();
    for v in &violations {
        let pair = v.split(" from ").next();
        if !examples.iter().any(|e| e.split(" from ").next() == pair) {
            examples.push(v);
        }
    }
    assert!(
        violations.is_empty(),
        "{} of {} raced rounds match no serial order; one example per pair:\n{}",
        violations.len(),
        total,
        examples
            .iter()
            .map(|e| e.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

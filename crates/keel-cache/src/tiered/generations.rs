//! Per-key-stripe invalidation counters that keep a slow L2 read from refilling L1 with a value
//! an invalidation has already dropped.

use std::sync::atomic::Ordering;

/// Invalidation counters, striped by key hash. A read remembers its key's counter before
/// going to L2 and fills L1 only if no invalidation touched that stripe meanwhile; otherwise
/// a slow read could put a value back into L1 after a newer write invalidated it.
pub(super) struct Generations {
    stripes: [std::sync::atomic::AtomicU64; 64],
}

impl Generations {
    pub(super) fn new() -> Self {
        Self {
            stripes: std::array::from_fn(|_| std::sync::atomic::AtomicU64::new(0)),
        }
    }

    fn slot(&self, key: &str) -> &std::sync::atomic::AtomicU64 {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let h = BuildHasherDefault::<std::hash::DefaultHasher>::default().hash_one(key);
        &self.stripes[(h % 64) as usize]
    }

    pub(super) fn get(&self, key: &str) -> u64 {
        self.slot(key).load(Ordering::Acquire)
    }

    pub(super) fn bump(&self, key: &str) {
        self.slot(key).fetch_add(1, Ordering::AcqRel);
    }

    pub(super) fn bump_all(&self) {
        for s in &self.stripes {
            s.fetch_add(1, Ordering::AcqRel);
        }
    }
}

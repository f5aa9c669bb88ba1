//! The Zipf workload and contenders shared by the memory benches.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_cache::{Cache, CacheFuture, CacheKind, Capacity, Error, KeyTtl, MemoryCache, Ttl};
use keel_metrics::MetricsService;

pub const KEYS: usize = 100_000;
const OPS: usize = 1 << 16;
const VALUE: usize = 64;

/// splitmix64: a tiny deterministic generator, so every contender replays the same sequence.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The cumulative distribution of Zipf(s = 1.0) over `KEYS` keys.
pub fn zipf_cdf() -> Vec<f64> {
    let total: f64 = (1..=KEYS).map(|k| 1.0 / k as f64).sum();
    let mut acc = 0.0;
    (1..=KEYS)
        .map(|k| {
            acc += 1.0 / k as f64 / total;
            acc
        })
        .collect()
}

/// The next key index drawn from `cdf`.
pub fn zipf_key(cdf: &[f64], state: &mut u64) -> usize {
    let u = (next(state) >> 11) as f64 / (1u64 << 53) as f64;
    cdf.partition_point(|&c| c < u).min(KEYS - 1)
}

/// `OPS` (key index, is_write) pairs: keys Zipf(s = 1.0) over `KEYS`, writes with
/// probability `write_pct`/100.
fn ops(write_pct: u64, seed: u64) -> Vec<(usize, bool)> {
    let cdf = zipf_cdf();
    let mut state = seed;
    (0..OPS)
        .map(|_| {
            let key = zipf_key(&cdf, &mut state);
            (key, next(&mut state) % 100 < write_pct)
        })
        .collect()
}

/// One side of a comparison.
pub trait Contender: Send + Sync + 'static {
    /// Replays `n` operations of `ops` on the calling thread.
    fn run(&self, keys: &[String], ops: &[(usize, bool)], n: u64, value: &Bytes);
}

/// A bare cache library: `insert` and `get` by `&str`.
trait RawCache: Send + Sync + 'static {
    fn put(&self, key: String, value: Bytes);
    fn fetch(&self, key: &str) -> Option<Bytes>;
}

impl RawCache for moka::sync::Cache<String, Bytes> {
    fn put(&self, key: String, value: Bytes) {
        self.insert(key, value);
    }
    fn fetch(&self, key: &str) -> Option<Bytes> {
        self.get(key)
    }
}

impl RawCache for quick_cache::sync::Cache<Box<str>, (Bytes, u64)> {
    fn put(&self, key: String, value: Bytes) {
        self.insert(key.into(), (value, u64::MAX));
    }
    fn fetch(&self, key: &str) -> Option<Bytes> {
        self.get(key).map(|v| v.0)
    }
}

impl RawCache for quick_cache::sync::Cache<String, Bytes> {
    fn put(&self, key: String, value: Bytes) {
        self.insert(key, value);
    }
    fn fetch(&self, key: &str) -> Option<Bytes> {
        self.get(key)
    }
}

/// Raw moka or raw quick_cache, on the same loop as Keel (on a current-thread runtime).
struct Raw<C>(C);

impl<C: RawCache> Contender for Raw<C> {
    fn run(&self, keys: &[String], ops: &[(usize, bool)], n: u64, value: &Bytes) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            for i in 0..n as usize {
                let (k, write) = ops[i % ops.len()];
                if write {
                    self.0.put(keys[k].clone(), value.clone());
                } else {
                    black_box(self.0.fetch(keys[k].as_str()));
                }
            }
        });
    }
}

/// The floor of the `Cache` API's shape: raw quick_cache (Keel's key and value types) behind
/// `dyn Cache` and `CacheFuture`, with nothing else — no key check, no open check, no TTL,
/// no stripe, no metrics. Only `get` and `set` work. What it costs over `raw_quick_cache` is
/// what any backend pays for being called through the trait; what `keel_memory` costs over
/// it is the backend's own work.
#[derive(Debug)]
struct DynFloor(quick_cache::sync::Cache<Box<str>, (Bytes, u64)>);

impl DynFloor {
    fn unsupported<'a, T: Send + 'a>(&self) -> CacheFuture<'a, keel_cache::Result<T>> {
        CacheFuture::ready(Err(Error::Closed {
            cache: "dyn_floor".into(),
        }))
    }
}

impl Cache for DynFloor {
    fn name(&self) -> &str {
        "dyn_floor"
    }
    fn kind(&self) -> CacheKind {
        CacheKind::Memory
    }
    fn connect<'a>(&'a self) -> CacheFuture<'a, keel_cache::Result<()>> {
        CacheFuture::ready(Ok(()))
    }
    fn close<'a>(&'a self) -> CacheFuture<'a, keel_cache::Result<()>> {
        CacheFuture::ready(Ok(()))
    }
    fn is_connected(&self) -> bool {
        true
    }
    fn get<'a>(&'a self, key: &'a str) -> CacheFuture<'a, keel_cache::Result<Option<Bytes>>> {
        CacheFuture::ready(Ok(self.0.get(key).map(|v| v.0)))
    }
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        _ttl: Ttl,
    ) -> CacheFuture<'a, keel_cache::Result<()>> {
        self.0.insert(key.into(), (value, u64::MAX));
        CacheFuture::ready(Ok(()))
    }
    fn delete<'a>(&'a self, _: &'a str) -> CacheFuture<'a, keel_cache::Result<bool>> {
        self.unsupported()
    }
    fn exists<'a>(&'a self, _: &'a str) -> CacheFuture<'a, keel_cache::Result<bool>> {
        self.unsupported()
    }
    fn expire<'a>(&'a self, _: &'a str, _: Ttl) -> CacheFuture<'a, keel_cache::Result<bool>> {
        self.unsupported()
    }
    fn ttl<'a>(&'a self, _: &'a str) -> CacheFuture<'a, keel_cache::Result<KeyTtl>> {
        self.unsupported()
    }
    fn set_nx<'a>(
        &'a self,
        _: &'a str,
        _: Bytes,
        _: Ttl,
    ) -> CacheFuture<'a, keel_cache::Result<bool>> {
        self.unsupported()
    }
    fn set_if_match<'a>(
        &'a self,
        _: &'a str,
        _: Bytes,
        _: &'a [u8],
        _: Ttl,
    ) -> CacheFuture<'a, keel_cache::Result<bool>> {
        self.unsupported()
    }
    fn incr_by<'a>(&'a self, _: &'a str, _: i64) -> CacheFuture<'a, keel_cache::Result<i64>> {
        self.unsupported()
    }
    fn get_many<'a>(
        &'a self,
        _: &'a [&'a str],
    ) -> CacheFuture<'a, keel_cache::Result<Vec<Option<Bytes>>>> {
        self.unsupported()
    }
    fn set_many<'a>(
        &'a self,
        _: &'a [(&'a str, Bytes)],
        _: Ttl,
    ) -> CacheFuture<'a, keel_cache::Result<()>> {
        self.unsupported()
    }
    fn delete_many<'a>(&'a self, _: &'a [&'a str]) -> CacheFuture<'a, keel_cache::Result<u64>> {
        self.unsupported()
    }
    fn clear<'a>(&'a self) -> CacheFuture<'a, keel_cache::Result<()>> {
        self.unsupported()
    }
}

struct Keel(Arc<dyn Cache>);

impl Contender for Keel {
    fn run(&self, keys: &[String], ops: &[(usize, bool)], n: u64, value: &Bytes) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            for i in 0..n as usize {
                let (k, write) = ops[i % ops.len()];
                if write {
                    let _ = self.0.set(&keys[k], value.clone(), Ttl::Never).await;
                } else {
                    let _ = black_box(self.0.get(&keys[k]).await);
                }
            }
        });
    }
}

/// A workload: keys, per-thread op sequences, and prefilled contenders.
pub struct Workload {
    keys: Arc<Vec<String>>,
    ops: Vec<Arc<Vec<(usize, bool)>>>,
    /// `(name, contender)`; the anchor `raw_moka` comes first, then `raw_quick_cache`
    /// (`quick_cache::sync::Cache<String, Bytes>` bounded at the same entry count).
    pub contenders: Vec<(&'static str, Arc<dyn Contender>)>,
}

impl Workload {
    /// Builds and prefills every contender (each entry with its own buffer: one shared
    /// `Bytes` would turn every clone on a get into traffic on a single reference count).
    /// With `variants`, also raw moka with the backend's features turned on one at a time.
    pub fn new(write_pct: u64, variants: bool) -> Self {
        let keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(|i| format!("key:{i:08}")).collect());
        let ops = (0..2).map(|t| Arc::new(ops(write_pct, 42 + t))).collect();
        let value = [b'v'; VALUE];
        let raw = moka::sync::Cache::builder()
            .max_capacity(KEYS as u64)
            .build();
        let keel = |count_evictions, time_one_in| {
            let metrics = MetricsService::new("bench").unwrap();
            MemoryCache::builder("bench")
                .capacity(Capacity::Entries(KEYS as u64))
                .count_evictions(count_evictions)
                .time_one_in(time_one_in)
                .metrics(&metrics)
                .build()
        };
        let (keel, keel_fast, keel_timed) = (keel(true, 8), keel(false, 8), keel(true, 1));
        let quick = quick_cache::sync::Cache::new(KEYS);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            for k in keys.iter() {
                raw.insert(k.clone(), Bytes::copy_from_slice(&value));
                quick.insert(k.clone(), Bytes::copy_from_slice(&value));
                for c in [&keel, &keel_fast, &keel_timed] {
                    c.set(k, Bytes::copy_from_slice(&value), Ttl::Never)
                        .await
                        .unwrap();
                }
            }
        });
        let floor = DynFloor(quick_cache::sync::Cache::new(KEYS));
        for k in keys.iter() {
            floor.0.insert(
                k.as_str().into(),
                (Bytes::copy_from_slice(&value), u64::MAX),
            );
        }
        let mut contenders: Vec<(&'static str, Arc<dyn Contender>)> = vec![
            ("raw_moka", Arc::new(Raw(raw))),
            ("raw_quick_cache", Arc::new(Raw(quick))),
            ("dyn_cache_floor", Arc::new(Keel(Arc::new(floor)))),
            ("keel_memory", Arc::new(Keel(Arc::new(keel)))),
            (
                "keel_memory_no_eviction_count",
                Arc::new(Keel(Arc::new(keel_fast))),
            ),
            (
                "keel_memory_time_every_call",
                Arc::new(Keel(Arc::new(keel_timed))),
            ),
        ];
        if variants {
            struct NoExpiry;
            impl moka::Expiry<String, Bytes> for NoExpiry {}
            let expiry = moka::sync::Cache::builder()
                .max_capacity(KEYS as u64)
                .expire_after(NoExpiry)
                .build();
            let listener = moka::sync::Cache::builder()
                .max_capacity(KEYS as u64)
                .eviction_listener(|_, _, _| {})
                .build();
            for k in keys.iter() {
                expiry.insert(k.clone(), Bytes::copy_from_slice(&value));
                listener.insert(k.clone(), Bytes::copy_from_slice(&value));
            }
            let q2: quick_cache::sync::Cache<Box<str>, (Bytes, u64)> =
                quick_cache::sync::Cache::new(KEYS);
            for k in keys.iter() {
                q2.insert(
                    k.as_str().into(),
                    (Bytes::copy_from_slice(&value), u64::MAX),
                );
            }
            contenders.push(("quick_boxstr_stored", Arc::new(Raw(q2))));
            contenders.push(("moka_with_expiry", Arc::new(Raw(expiry))));
            contenders.push(("moka_with_listener", Arc::new(Raw(listener))));
        }
        Self {
            keys,
            ops,
            contenders,
        }
    }

    /// Wall time for `iters` operations split over `threads` threads.
    pub fn timed(&self, contender: &Arc<dyn Contender>, threads: usize, iters: u64) -> Duration {
        let per_thread = iters.div_ceil(threads as u64);
        let start = Instant::now();
        std::thread::scope(|s| {
            for ops in self.ops.iter().take(threads) {
                // Each thread writes its own buffer.
                let value = Bytes::from(vec![b'v'; VALUE]);
                let (c, keys, ops) = (contender.clone(), self.keys.clone(), ops.clone());
                s.spawn(move || c.run(&keys, &ops, per_thread, &value));
            }
        });
        start.elapsed()
    }
}

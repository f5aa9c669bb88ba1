//! One request's path: the prefixed key as a command argument, and the bound, error mapping
//! and metrics around each request ([`Shared::run`], [`Shared::request`]). This is the hot
//! path the paired harness measures against raw redis-rs (BENCHMARKS.md, issue 14): each
//! piece here is shaped to add as few instructions per request as it can.

use super::*;

/// By default one request in this many (per thread and operation) is timed for the duration
/// histogram ([`RedisCacheBuilder::time_one_in`]); every request is counted.
pub(super) const TIME_ONE_IN: u32 = 8;

/// `prefix + key` as one command argument, written straight into the command's buffer
/// (no `String` built per request).
#[derive(Clone, Copy)]
pub(super) struct Prefixed<'a> {
    prefix: &'a str,
    key: &'a str,
}

impl redis::ToRedisArgs for Prefixed<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        use bytes::BufMut as _;
        let mut arg = out.bufmut_for_next_arg(self.prefix.len() + self.key.len());
        arg.put_slice(self.prefix.as_bytes());
        arg.put_slice(self.key.as_bytes());
    }
}

impl redis::ToSingleRedisArg for Prefixed<'_> {}

impl Shared {
    /// `key` with this cache's prefix, as a command argument.
    #[inline]
    pub(super) fn prefixed<'a>(&'a self, key: &'a str) -> Prefixed<'a> {
        Prefixed {
            prefix: &self.prefix,
            key,
        }
    }

    pub(super) fn key(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + key.len());
        k.push_str(&self.prefix);
        k.push_str(key);
        k
    }

    pub(super) fn ttl_ms(&self, key: &str, ttl: Ttl) -> Result<Option<u64>> {
        Ok(ttl
            .resolve(self.default_ttl, key)?
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
    }

    /// Runs one request under the request bound, maps its error and records metrics; call it
    /// inside a runtime, when the request starts (see [`request`](Self::request)). Not an
    /// `async fn`: the timer and the recording are combinators around `body`, so the request's
    /// future is not copied once per layer (an `async fn` keeps its argument and the timer
    /// holding it side by side, and each move copied the whole future, several hundred bytes
    /// for a SET).
    pub(super) fn run<'a, T: 'a>(
        &'a self,
        op: Operation,
        status: impl FnOnce(&T) -> Status + 'a,
        body: impl Future<Output = Result<T>> + 'a,
    ) -> impl Future<Output = Result<T>> + 'a {
        use futures_util::FutureExt as _;
        // One clock read serves the timer's deadline and the duration's start.
        let start = tokio::time::Instant::now();
        // A request that will look the Sentinel master up again first gets the time to
        // connect on top (the look-up is bounded by the connect timeout): cut short at the
        // bound, every request would start it over and none would reach the new master.
        let bound = if self.resolve_pending() {
            self.bound.saturating_add(self.connect_timeout)
        } else {
            self.bound
        };
        tokio::time::timeout_at(start + bound, body).map(move |bounded| {
            let result = bounded.unwrap_or_else(|_| Err(self.timed_out(op.as_str())));
            self.finish(op, status, || start.elapsed(), &result);
            result
        })
    }

    /// [`run`](Self::run) as the boxed future a [`Cache`] method returns. The bound and the
    /// duration start when the future is first polled, not when it is made: a request made
    /// now and awaited later (collected into a `buffer_unordered`, or held across another
    /// `await`) must not time out before it was sent — an applied write would then be
    /// reported as an unknown outcome. This also lets a request be made outside a runtime and
    /// awaited inside one (`rt.block_on(cache.get(k))`). Costs one move of `body` into the
    /// timer at the first poll.
    pub(super) fn request<'a, T: 'a>(
        &'a self,
        op: Operation,
        status: impl FnOnce(&T) -> Status + Send + 'a,
        body: impl Future<Output = Result<T>> + Send + 'a,
    ) -> CacheFuture<'a, Result<T>> {
        CacheFuture::boxed(async move { self.run(op, status, body).await })
    }

    /// [`run`](Self::run) with the bounding left to `body` (a sweep bounds each step).
    pub(super) async fn run_bounded<T>(
        &self,
        op: Operation,
        status: impl FnOnce(&T) -> Status,
        body: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let start = Instant::now();
        let result = body.await;
        self.finish(op, status, || start.elapsed(), &result);
        result
    }

    /// Records a finished request.
    #[inline]
    fn finish<T>(
        &self,
        op: Operation,
        status: impl FnOnce(&T) -> Status,
        elapsed: impl FnOnce() -> Duration,
        result: &Result<T>,
    ) {
        let status = match result {
            Ok(v) => {
                // Read first: a store on every request would bounce this shared cache line
                // between the cores of every worker thread.
                if !self.healthy.load(Ordering::Relaxed) {
                    self.healthy.store(true, Ordering::Relaxed);
                }
                status(v)
            }
            Err(_) => Status::Error,
        };
        // Every request is counted; one in `time_one_in` also goes into the duration
        // histogram (docs/metrics.md): the closing clock read and the histogram update were a
        // measurable share of the client's CPU per request.
        let slot = keel_metrics::striped::slot();
        if self.metrics.sampled(slot, self.time_one_in, op) {
            self.metrics.record_in(slot, op, status, elapsed());
        } else {
            self.metrics.count_in(slot, op, status);
        }
    }

    /// Runs `body` under the request bound (see [`Shared::bound`]). A timeout marks the
    /// connection unhealthy.
    pub(super) async fn bounded<T>(
        &self,
        operation: &'static str,
        body: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.bound, body).await {
            Ok(r) => r,
            Err(_) => Err(self.timed_out(operation)),
        }
    }

    /// The error of a request that hit the bound: the connection is marked unhealthy and, in
    /// Sentinel mode, the master is looked up again before the next request (it may have
    /// moved), as for a timeout reported by redis-rs.
    #[cold]
    fn timed_out(&self, operation: &'static str) -> Error {
        self.healthy.store(false, Ordering::Relaxed);
        self.resolve.store(true, Ordering::Release);
        Error::Timeout {
            cache: self.name.clone(),
            operation,
            after: self.bound,
        }
    }
}

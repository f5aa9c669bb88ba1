//! [`RateStore`] on Redis: one key per rate limit key holding its theoretical arrival time
//! in µs on the server's clock (`TIME`); every decision is one script (`scripts::GCRA`).

use std::time::Duration;

use super::RedisStore;
use crate::Result;
use crate::rate::Decision;
use crate::store::{CoordFuture, RateStore};

impl RateStore for RedisStore {
    fn gcra<'a>(
        &'a self,
        key: &'a str,
        emission: Duration,
        burst: u32,
        cost: u32,
    ) -> CoordFuture<'a, Result<Decision>> {
        Box::pin(async move {
            let k = format!("__keel_rate:{}{{{key}}}", self.inner.namespace);
            let reply: (i64, i64, i64, i64) = self
                .call(
                    "rate_limit",
                    &self.inner.scripts.rate_gcra,
                    &[&k],
                    &[
                        &emission.as_micros().max(1).to_string(),
                        &burst.to_string(),
                        &cost.to_string(),
                    ],
                )
                .await?;
            let us = |v: i64| u64::try_from(v).unwrap_or(0);
            Ok(Decision::from_store(
                reply.0 == 1,
                u32::try_from(reply.1).unwrap_or(u32::MAX),
                us(reply.2),
                us(reply.3),
            ))
        })
    }
}

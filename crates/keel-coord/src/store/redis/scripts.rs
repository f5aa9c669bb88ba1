//! The Lua scripts, one atomic step each. Releases `PUBLISH` the name on the store's
//! channel in the same step, so waiters in every process retry at once. `PUBLISH` inside a
//! script is allowed in Cluster mode (the bus forwards it to every node).

/// Lock acquire: `KEYS[1]` lock, `KEYS[2]` fence counter, `ARGV[1]` token, `ARGV[2]` TTL ms.
/// Returns the new fencing token, or 0 when the lock is held. A missing counter (lost in a
/// restart without persistence, or evicted) is seeded from the server's clock in
/// microseconds first (as [`SEED_FENCE`] does), so tokens keep increasing across the loss
/// as long as that clock does not go back.
pub(super) const LOCK_ACQUIRE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if redis.call('EXISTS', KEYS[2]) == 0 then
    local t = redis.call('TIME')
    redis.call('SET', KEYS[2], t[1] .. string.rep('0', 6 - #t[2]) .. t[2])
  end
  return redis.call('INCR', KEYS[2])
end
return 0";

/// Seeds a missing fence counter `KEYS[2]` with the server's clock in microseconds (a
/// string: `TIME`'s seconds and zero-padded microseconds, never a Lua float), so the next
/// `INCR` is above every token handed out before the counter was lost.
const SEED_FENCE: &str = r"
if redis.call('EXISTS', KEYS[2]) == 0 then
  local t = redis.call('TIME')
  redis.call('SET', KEYS[2], t[1] .. string.rep('0', 6 - #t[2]) .. t[2])
end
";

/// Lock release: delete `KEYS[1]` only if it holds `ARGV[1]`, then publish `ARGV[3]` (the
/// name) on channel `ARGV[2]`.
pub(super) const LOCK_RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0";

/// Lock extend: reset `KEYS[1]`'s TTL to `ARGV[2]` ms only if it holds `ARGV[1]`.
pub(super) const LOCK_EXTEND: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// The server's clock in ms, and the key's own expiry pushed out to cover lease `ms`.
/// Leases are judged by this one clock (the server's), never the clients'.
const NOW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function keep(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end
";

/// Semaphore acquire: `KEYS[1]` the permit set (token -> lease end, server ms), `KEYS[2]`
/// fence counter; `ARGV[1]` token, `ARGV[2]` permits, `ARGV[3]` TTL ms. Drops expired
/// leases, then takes a permit if fewer than `permits` are held. Returns the new fencing
/// token (a missing counter seeded first by [`SEED_FENCE`]), or 0 when all permits are taken.
pub(super) fn semaphore_acquire() -> String {
    format!(
        "{NOW}
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  local ms = tonumber(ARGV[3])
  redis.call('ZADD', KEYS[1], now + ms, ARGV[1])
  keep(KEYS[1], ms)
  {SEED_FENCE}
  return redis.call('INCR', KEYS[2])
end
return 0"
    )
}

/// Semaphore release: remove `ARGV[1]`'s permit from `KEYS[1]`; if it was there (and not
/// expired), publish `ARGV[3]` on channel `ARGV[2]`. Returns 1 if the permit was held.
pub(super) fn semaphore_release() -> String {
    format!(
        "{NOW}
local lease = redis.call('ZSCORE', KEYS[1], ARGV[1])
if lease then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  if tonumber(lease) > now then return 1 end
end
return 0"
    )
}

/// Semaphore extend: reset `ARGV[1]`'s lease in `KEYS[1]` to `ARGV[2]` ms from now, only if
/// it is held and has not expired. Returns 1 if it was.
pub(super) fn semaphore_extend() -> String {
    format!(
        "{NOW}
local lease = redis.call('ZSCORE', KEYS[1], ARGV[1])
if lease and tonumber(lease) > now then
  local ms = tonumber(ARGV[2])
  redis.call('ZADD', KEYS[1], 'XX', now + ms, ARGV[1])
  keep(KEYS[1], ms)
  return 1
end
return 0"
    )
}

/// Semaphore count: the unexpired permits in `KEYS[1]` (read only).
pub(super) fn semaphore_count() -> String {
    format!(
        "{NOW}
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')"
    )
}

/// GCRA rate limit step: `KEYS[1]` the key's theoretical arrival time (µs on the server's
/// clock), `ARGV[1]` emission interval µs, `ARGV[2]` burst, `ARGV[3]` cost. The same
/// arithmetic as `store/gcra.rs` (`step`). Returns `{allowed, remaining, retry_after µs,
/// reset_after µs}`; an allowed request stores the new arrival time with a `PX` expiry at
/// that time, so an idle key vanishes once it would count as fresh. Times in µs since the
/// epoch stay below 2^53, exact in Lua's doubles; `%.0f` keeps them from being written in
/// exponent form.
pub(super) const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local e = tonumber(ARGV[1])
local stored = redis.call('GET', KEYS[1])
local tat = now
if stored then
  local v = tonumber(stored)
  if v and v > now then tat = v end
end
local new_tat = tat + e * tonumber(ARGV[3])
local allow_at = new_tat - e * tonumber(ARGV[2])
if allow_at > now then
  return {0, 0, allow_at - now, tat - now}
end
local reset = new_tat - now
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil(reset / 1000))
return {1, math.floor((now - allow_at) / e), 0, reset}";

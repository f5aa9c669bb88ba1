//! The Lua scripts: compare-and-set, persist-if-exists, and the lock acquire / release /
//! extend steps (each one atomic step on the server).

/// Compare-and-set: `KEYS[1]`, expected `ARGV[1]`, new value `ARGV[2]`, TTL in ms `ARGV[3]`
/// (empty: no expiry).
pub(super) const CAS_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if ARGV[3] == '' then
    redis.call('SET', KEYS[1], ARGV[2])
  else
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  end
  return 1
end
return 0";

/// `PERSIST` that reports whether the key exists (plain `PERSIST` answers 0 for an existing
/// key without TTL).
pub(super) const PERSIST_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('PERSIST', KEYS[1])
  return 1
end
return 0";

/// Lock acquire: `KEYS[1]` lock, `KEYS[2]` fence counter, `ARGV[1]` token, `ARGV[2]` TTL ms.
/// Returns the new fencing token, or 0 when the lock is held.
pub(super) const LOCK_ACQUIRE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return 0";

/// Lock release: delete `KEYS[1]` only if it holds `ARGV[1]`.
pub(super) const LOCK_RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// Lock extend: reset `KEYS[1]`'s TTL to `ARGV[2]` ms only if it holds `ARGV[1]`.
pub(super) const LOCK_EXTEND: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

//! The Lua scripts: compare-and-set and persist-if-exists (each one atomic step on the
//! server).

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

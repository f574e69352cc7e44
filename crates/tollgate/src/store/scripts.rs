//! The Lua scripts tollgate runs in Redis. Each runs atomically on the server and reads the
//! server's clock (`TIME`) itself, so the clocks of the processes that share a budget never
//! matter.
//!
//! Time inside the scripts is in microseconds since 2024-01-01 (a 2²⁰⁵³-safe number for
//! centuries), kept as floating point with three decimals (nanoseconds).

use std::sync::LazyLock;

use redis::Script;

/// What every budget script starts with: `now` on the server clock, and `load(key, n, at)`,
/// which reads the TAT of the `n` slots described from `ARGV[at]` on (four arguments per slot,
/// the slot number first and its `ei` second) in one `HMGET`: each TAT is `now` when the key has
/// none, and is rescaled from the rate it was written under to `ei`, so a reload that changed a
/// limit keeps the units in use.
const PROLOGUE: &str = r#"
local t = redis.call('TIME')
local now = (tonumber(t[1]) - 1704067200) * 1000000 + tonumber(t[2])
local function load(key, n, at)
  local fields = {}
  for s = 1, n do
    local field = ARGV[at + (s - 1) * 4]
    fields[2 * s - 1] = 't' .. field
    fields[2 * s] = 'e' .. field
  end
  local v = redis.call('HMGET', key, unpack(fields))
  local tats = {}
  for s = 1, n do
    local ei = tonumber(ARGV[at + (s - 1) * 4 + 1])
    local tat = tonumber(v[2 * s - 1]) or now
    local old = tonumber(v[2 * s])
    if old and old ~= ei and tat > now then
      tat = now + (tat - now) * ei / old
    end
    tats[s] = tat
  end
  return tats
end
"#;

/// A budget script: the prologue, then `body`.
fn budget_script(body: &str) -> Script {
    Script::new(&format!("{PROLOGUE}{body}"))
}

/// Admits one call against every Redis budget it matches, all or nothing.
///
/// Per key in `KEYS` order, `ARGV` holds:
/// - a rate budget (a hash, one field pair per limit): `r`, `want`, `n`, then `n` times
///   `slot`, `ei` (µs per unit), `tau` (burst tolerance, µs), `inc` (µs this call takes).
///   `want` > 1 asks for a lease: room for up to `want` calls, at least one.
/// - a concurrency gate (a sorted set of leases scored by expiry): `c`, `max`, `ttl` (µs) and
///   the name of this call's lease.
/// - a look at a gate: `p`; its leases alive now are counted, nothing is taken.
///
/// Returns `{1, now, then per rate key: granted calls and each slot's new TAT, per looked-at gate:
/// its count}` when every check passes (and only then writes: one `HSET` and one `PEXPIRE` per
/// rate key), else `{0, key index, slot index, wait µs or -1, TAT - now}` for the first check
/// that fails (slot index 0 and wait -1 for a full gate).
pub(crate) static ADMIT: LazyLock<Script> = LazyLock::new(|| {
    budget_script(
        r#"
local i = 1
local checks = {}
for k = 1, #KEYS do
  local key = KEYS[k]
  local kind = ARGV[i]
  if kind == 'r' then
    local want = tonumber(ARGV[i + 1])
    local n = tonumber(ARGV[i + 2])
    i = i + 3
    local tats = load(key, n, i)
    local slots = {}
    local fit = want
    for s = 1, n do
      local field = ARGV[i]
      local ei = ARGV[i + 1]
      local tau = tonumber(ARGV[i + 2])
      local inc = tonumber(ARGV[i + 3])
      i = i + 4
      local tat = tats[s]
      if tat < now then tat = now end
      if inc > 0 then
        local m = math.floor((tau - (tat - now) + 0.001) / inc)
        if m < 1 then
          local wait = tat + inc - now - tau
          if wait < 0.001 then wait = 0.001 end
          return {0, k, s, string.format('%.3f', wait), string.format('%.3f', tat - now)}
        end
        if m < fit then fit = m end
      end
      slots[s] = {field, ei, tat, inc}
    end
    checks[k] = {'r', fit, slots}
  elseif kind == 'p' then
    i = i + 1
    checks[k] = {'p', redis.call('ZCOUNT', key, string.format('%.3f', now), '+inf')}
  else
    local max = tonumber(ARGV[i + 1])
    local ttl = tonumber(ARGV[i + 2])
    local member = ARGV[i + 3]
    i = i + 4
    redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%.3f', now))
    if redis.call('ZCARD', key) >= max then
      return {0, k, 0, '-1', '0'}
    end
    checks[k] = {'c', ttl, member}
  end
end
local out = {1, string.format('%.3f', now)}
for k = 1, #KEYS do
  local key = KEYS[k]
  local c = checks[k]
  if c[1] == 'r' then
    out[#out + 1] = c[2]
    local last = now
    local pairs = {}
    for _, sl in ipairs(c[3]) do
      local tat = string.format('%.3f', sl[3] + c[2] * sl[4])
      pairs[#pairs + 1] = 't' .. sl[1]
      pairs[#pairs + 1] = tat
      pairs[#pairs + 1] = 'e' .. sl[1]
      pairs[#pairs + 1] = sl[2]
      if tonumber(tat) > last then last = tonumber(tat) end
      out[#out + 1] = tat
    end
    redis.call('HSET', key, unpack(pairs))
    redis.call('PEXPIRE', key, math.ceil((last - now) / 1000) + 1000)
  elseif c[1] == 'p' then
    out[#out + 1] = c[2]
  else
    local expiry = now + c[2]
    redis.call('ZADD', key, string.format('%.3f', expiry), c[3])
    redis.call('PEXPIRE', key, math.ceil(c[2] / 1000) + 1000)
  end
end
return out
"#,
    )
});

/// Replaces reservations by what calls used: per key in `KEYS`, `ARGV` holds `n`, then `n`
/// times `slot`, `ei`, `delta` (µs: positive charges extra, negative refunds) and `end` (the
/// TAT right after the reservation). A refund returns only the part of the charge still ahead of
/// now — the rest has refilled by itself — and never moves a TAT below now, exactly as the local
/// cells do; an extra charge is always taken. The same slot may appear more than once.
pub(crate) static ADJUST: LazyLock<Script> = LazyLock::new(|| {
    budget_script(
        r#"
local i = 1
for k = 1, #KEYS do
  local key = KEYS[k]
  local n = tonumber(ARGV[i])
  i = i + 1
  local tats = load(key, n, i)
  local last = now
  local set = {}
  local gone = {}
  local latest = {}
  for s = 1, n do
    local field = ARGV[i]
    local ei = ARGV[i + 1]
    local delta = tonumber(ARGV[i + 2])
    local stop = tonumber(ARGV[i + 3])
    i = i + 4
    local tat = latest[field] or tats[s]
    if delta > 0 then
      if tat < now then tat = now end
      tat = tat + delta
    else
      local give = math.min(-delta, stop - now)
      if give > 0 and tat > now then
        tat = math.max(tat - give, now)
      end
    end
    latest[field] = tat
    set[field] = ei
  end
  local pairs = {}
  for field, ei in next, set do
    local tat = latest[field]
    if tat > now then
      pairs[#pairs + 1] = 't' .. field
      pairs[#pairs + 1] = string.format('%.3f', tat)
      pairs[#pairs + 1] = 'e' .. field
      pairs[#pairs + 1] = ei
      if tat > last then last = tat end
    else
      gone[#gone + 1] = 't' .. field
      gone[#gone + 1] = 'e' .. field
    end
  end
  if #pairs > 0 then
    redis.call('HSET', key, unpack(pairs))
    redis.call('PEXPIRE', key, math.ceil((last - now) / 1000) + 1000)
  end
  if #gone > 0 then
    redis.call('HDEL', key, unpack(gone))
  end
end
return 1
"#,
    )
});

/// Renews concurrency leases still held: `ARGV[1]` is the lease time (µs), then one member per
/// key in `KEYS`. A lease that already expired (this process stalled past it) is not revived.
pub(crate) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    budget_script(
        r#"
local ttl = tonumber(ARGV[1])
local renewed = 0
for k = 1, #KEYS do
  local score = redis.call('ZSCORE', KEYS[k], ARGV[k + 1])
  if score and tonumber(score) > now then
    redis.call('ZADD', KEYS[k], 'XX', string.format('%.3f', now + ttl), ARGV[k + 1])
    redis.call('PEXPIRE', KEYS[k], math.ceil(ttl / 1000) + 1000)
    renewed = renewed + 1
  end
end
return renewed
"#,
    )
});

/// Stores a cache entry under a total size bound: `KEYS[1]` the entry, `KEYS[2]` the index (a
/// sorted set of entries by expiry), `KEYS[3]` the sizes (a hash, with the total in `_total`);
/// `ARGV[1]` the body, `ARGV[2]` its TTL in milliseconds, `ARGV[3]` the bound in bytes.
/// Expired entries leave the index first, then the entries closest to expiry until the new one
/// fits. Returns how many entries were evicted.
pub(crate) static CACHE_PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local entry, index, sizes = KEYS[1], KEYS[2], KEYS[3]
local body, ttl, bound = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local total = tonumber(redis.call('HGET', sizes, '_total') or '0')
local function forget(key)
  local size = tonumber(redis.call('HGET', sizes, key) or '0')
  redis.call('HDEL', sizes, key)
  redis.call('ZREM', index, key)
  total = total - size
end
for _, key in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', now)) do
  forget(key)
end
if redis.call('HEXISTS', sizes, entry) == 1 then
  forget(entry)
end
local evicted = 0
while total + #body > bound do
  local oldest = redis.call('ZRANGE', index, 0, 0)
  if #oldest == 0 then break end
  redis.call('DEL', oldest[1])
  forget(oldest[1])
  evicted = evicted + 1
end
if total < 0 then total = 0 end
redis.call('SET', entry, body, 'PX', ttl)
redis.call('ZADD', index, now + ttl, entry)
redis.call('HSET', sizes, entry, #body)
total = total + #body
redis.call('HSET', sizes, '_total', total)
return evicted
"#,
    )
});

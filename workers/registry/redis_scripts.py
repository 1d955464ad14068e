"""Lua scripts of the Redis registry (`workers.registry.redis_backend`); each runs atomically on the server.

Keys and fields are described in `workers.registry.redis_backend` and docs/scaling.md.
"""

from __future__ import annotations

from typing import Final

# KEYS queue, meta, alive[, idem]; ARGV id, now_ms, lost_ms, limit, must_queue, ttl_ms, owner, request,
# created_at[, fingerprint]. With an Idempotency-Key (KEYS[4]): a key already held answers its
# "<job id> <fingerprint>" and admits nothing; an admitted job takes the key for the TTL.
SUBMIT: Final = """
if #KEYS >= 4 then
  local held = redis.call('GET', KEYS[4])
  if held then return held end
end
if ARGV[5] == '1' then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[2]) - tonumber(ARGV[3]))
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
end
redis.call('HSET', KEYS[2], 'request', ARGV[8], 'created_at', ARGV[9], 'state', 'queued',
           'tokens_out', '0', 'n', '0', 'owner', ARGV[7])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('SET', KEYS[3], ARGV[7], 'PX', ARGV[3])
if #KEYS >= 4 then redis.call('SET', KEYS[4], ARGV[1] .. ' ' .. ARGV[10], 'PX', ARGV[6]) end
return 1
"""

# KEYS meta, events, alive; ARGV count, final, grace_ms, ttl_ms, now_ms, on_behalf, (id, bytes) * count,
# field/value... Appends consecutive events in one call; `final` marks the last one as the end.
# Appends only if the log ends right before the first id; on_behalf: and only if the owner's heartbeat is gone.
# 1: appended; 0: the record is gone or final; -1: refused (another writer, or the owner is alive).
APPEND: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'final') == 1 then return 0 end
local count = tonumber(ARGV[1])
local final = ARGV[2] == '1'
-- compare-and-set on the last event id: a log restored from an older snapshot never gets a gap
if tonumber(redis.call('HGET', KEYS[1], 'n')) ~= tonumber(ARGV[7]) - 1 then return -1 end
if ARGV[6] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
for i = 0, count - 1 do
  local added
  if final and i == count - 1 then
    added = redis.pcall('XADD', KEYS[2], '0-' .. ARGV[7 + 2 * i], 'b', ARGV[8 + 2 * i], 'f', '1')
  else
    added = redis.pcall('XADD', KEYS[2], '0-' .. ARGV[7 + 2 * i], 'b', ARGV[8 + 2 * i])
  end
  -- only the first can be refused (ids are consecutive, and a script runs alone)
  if type(added) == 'table' and added.err then return 0 end
end
local last = ARGV[5 + 2 * count]
redis.call('HSET', KEYS[1], 'n', last)
if #ARGV >= 7 + 2 * count then redis.call('HSET', KEYS[1], unpack(ARGV, 7 + 2 * count)) end
if final then
  redis.call('HSET', KEYS[1], 'final', last, 'finished_ms', ARGV[5])
  redis.call('DEL', KEYS[3])
  if redis.call('HEXISTS', KEYS[1], 'deleted') == 1 then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
  elseif redis.call('HEXISTS', KEYS[1], 'attached') == 1 then
    redis.call('PEXPIRE', KEYS[1], ARGV[4])
  end
end
local left = redis.call('PTTL', KEYS[1])
if left > 0 then redis.call('PEXPIRE', KEYS[2], left + tonumber(ARGV[3])) end
return 1
"""

# KEYS meta, events; ARGV after, lease_ms, ttl_ms, now_ms, grace_ms
# nil: unknown; -1: nothing after `after`; else the position to read from
OPEN: Final = """
local m = redis.call('HMGET', KEYS[1], 'state', 'deleted', 'final', 'n', 'attached', 'finished_ms')
if not m[1] or m[2] then return false end
local after = tonumber(ARGV[1])
local grace = tonumber(ARGV[5])
if m[3] then
  if after >= tonumber(m[3]) then return -1 end
  if not m[5] then
    local keep = tonumber(m[6]) + tonumber(ARGV[3]) - tonumber(ARGV[4])
    if keep > redis.call('PTTL', KEYS[1]) then
      redis.call('PEXPIRE', KEYS[1], keep)
      redis.call('PEXPIRE', KEYS[2], keep + grace)
    end
  end
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]) + grace)
end
redis.call('HSET', KEYS[1], 'attached', '1')
return math.min(after, tonumber(m[4]))
"""

# KEYS meta, alive, queue, events; ARGV owner, lost_ms, lease_ms, queued, now_ms, id, grace_ms
TOUCH: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'gone' end
local m = redis.call('HMGET', KEYS[1], 'final', 'cancel', 'attached')
if m[1] then return 'ok' end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
if ARGV[4] == '1' then redis.call('ZADD', KEYS[3], 'XX', ARGV[5], ARGV[6]) end
if m[2] then return 'cancel' end
if m[3] then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
local left = redis.call('PTTL', KEYS[1])
if left > 0 then redis.call('PEXPIRE', KEYS[4], left + tonumber(ARGV[7])) end
return 'ok'
"""

# KEYS meta, events; ARGV grace_ms. nil: unknown; 1: already finished; 0: the owner must stop it
CANCEL: Final = """
local m = redis.call('HMGET', KEYS[1], 'state', 'deleted', 'final')
if not m[1] or m[2] then return false end
redis.call('HSET', KEYS[1], 'cancel', '1', 'deleted', '1')
if m[3] then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  redis.call('PEXPIRE', KEYS[2], 2 * tonumber(ARGV[1]))
  return 1
end
return 0
"""


# KEYS meta, events, alive: drop a reclaimed job's log and heartbeat (1), unless its record still exists (0)
FORGET: Final = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[2], KEYS[3])
return 1
"""

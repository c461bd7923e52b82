"""The Lua scripts of the Redis sink: one atomic step per write.

`APPLY` runs once per flush (EVALSHA) and does, atomically:

1. fence: while a rebuild holds an unexpired pause (`pause_token`,
   `pause_until_ms` in Redis' TIME) nothing is applied (`PAUSED`: the sink
   keeps its batch and retries); the meta hash must exist with this
   process's epoch (else `LOST`: Redis was flushed, or lost its data, while
   the sink ran), unless a rebuild has since built the board's current epoch
   (`REBUILT`: the sink adopts it); its stored position (or the rebuild's
   `rebuilt_position`, whichever is higher) must not be below what this
   process last applied (else `REGRESSED`: Redis lost acknowledged writes,
   e.g. a crash between AOF fsyncs); a batch at or below the stored position
   is a replay and changes nothing (`DUP`); a batch that straddles it is
   re-aggregated by the sink past it (`SPLIT`);
2. expiry: buckets that left the window (`< lowest bucket` of the sink's
   clock, never moving backwards) are subtracted from the boards and deleted;
3. apply: held future buckets whose time has come are applied first (see
   below); then the pre-aggregated cells (see `redis.board.Aggregate`) are
   added to their buckets and to the window totals; a cell of a bucket
   already out of the window is late (not counted, counted in `stats.late`);
   a cell of a bucket that starts more than `future_skew_ms` after the
   sink's clock is *held* (`w:f:<bucket>`, indexed in `w:fidx`, counted in
   `stats.future`) and applied by the first step whose clock reaches that
   bucket, so the board always equals the window of the source table by
   `event_ts`, future-dated events included once their time comes; a
   negative cell (a correction) that would take a bucket below zero is
   refused (counted as `uncorrectable`): its old value was never counted;
4. boards: every touched content id gets its score rewritten from the exact
   integer milliseconds (`ms / 1000`) and is removed only when it has no
   events left in the window (an event without seconds keeps it at 0);
5. position, freshness and stats are stored; every key gets its TTL.

All keys are built from the prefix passed in ARGV: with a hash tag in the
prefix (`{pulse}:`) they share one Redis Cluster slot with KEYS[1].
TTL bookkeeping and the rebuild's pause use Redis' own clock (`TIME`),
window maths the sink's clock (ARGV), so a test can drive the window with an
injected clock.

A rebuild (`runtime/rebuild.py`) runs `PAUSE` (take), reads its snapshot,
then swaps in one MULTI/EXEC: `RESET` (checks its pause, clears the window,
stores the snapshot's position in every position field, marks the board as
rebuilt, lifts the pause) and `APPLY` in swap mode (the snapshot's cells,
no fence: the rebuild's token instead).
"""

from __future__ import annotations

# ARGV of APPLY, in order (documented by position because Lua sees a flat list).
APPLY_ARGS = (
    "prefix", "label", "position", "expect", "epoch", "now_ms", "window_ms", "bucket_ms", "state_ttl_ms",
    "meta_ttl_ms", "newest_event_ms", "newest_commit_ms", "events", "future_skew_ms", "uncorrectable",
    "corrections", "null_content",
)  # then: n_content, n_devices, n_event_types, cells..., the batch's first position, the swap token (the
#    rebuild's pause token in its swap, '' for a live sink), the position field

APPLY = r"""
local meta, stats = KEYS[1], KEYS[2]
local P, label = ARGV[1], ARGV[2]
local pos, expect, epoch = ARGV[3], ARGV[4], ARGV[5]
local now = tonumber(ARGV[6])
local window, bsize = tonumber(ARGV[7]), tonumber(ARGV[8])
local ttl, meta_ttl = tonumber(ARGV[9]), tonumber(ARGV[10])

-- The position field is the last ARGV: one per sink instance (one per Kafka partition).
local pf = ARGV[#ARGV]
local swap = ARGV[#ARGV - 1]
local first = ARGV[#ARGV - 2]
local m = redis.call('HMGET', meta, 'epoch', pf, 'lo', 'deadline', 'newest_event_ms', 'newest_commit_ms',
                     'pause_token', 'pause_until_ms', 'rebuilt_epoch', 'rebuilt_position', 'swap_token')
local t = redis.call('TIME')
local rnow = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stored = m[2] or ''
if swap ~= '' then
  -- A rebuild's swap, queued after RESET in the same MULTI: RESET checked the
  -- pause and left its token; without it (pause expired) nothing is applied.
  if m[11] ~= swap then return {'EXPIRED', stored} end
  redis.call('HDEL', meta, 'swap_token')
else
  -- A rebuild holds the board: every stored position stays final until its swap.
  if m[7] and (tonumber(m[8] or '0') or 0) > rnow then return {'PAUSED', m[8]} end
  if not m[1] then return {'LOST', ''} end
  if epoch ~= '' and m[1] ~= epoch then
    -- A rebuild built the current epoch: the board is exact at its position,
    -- which is at or after anything this sink stored before. Adopt it.
    if m[9] == m[1] then return {'REBUILT', m[1]} end
    return {'LOST', m[1]}
  end
  -- The rebuild's position covers every instance, also one without a field yet.
  if m[10] and m[10] > stored then stored = m[10] end
  if expect ~= '' and stored < expect then return {'REGRESSED', stored} end
  if pos ~= '' and stored >= pos then
    redis.call('HINCRBY', stats, 'batches_replayed', 1)
    return {'DUP', stored}
  end
  -- A rebuild stored a position inside this batch: part of it is already in
  -- the rebuilt window. The sink re-aggregates what lies after it and retries.
  if first ~= '' and stored ~= '' and stored >= first then return {'SPLIT', stored} end
end

local deadline = tonumber(m[4] or '0') or 0
local expired = deadline > 0 and rnow >= deadline

local idx, acc, types = P .. 'w:idx', P .. 'w:acc', P .. 'w:types'
local top = P .. 'top:' .. label
local events, devices, etypes = P .. 'events:' .. label, P .. 'devices:' .. label, P .. 'event_types:' .. label

local lo = math.floor((now - window) / bsize)
local lo_stored = m[3] and tonumber(m[3])
if lo_stored and not expired and lo_stored > lo then lo = lo_stored end

local touched, tlist = {}, {}
local function touch(ctype, cid)
  local k = ctype .. '|' .. cid
  if not touched[k] then touched[k] = true; tlist[#tlist + 1] = {ctype, cid} end
end
local function acc_add(kind, ctype, cid, v)
  if v == 0 then return end
  redis.call('HINCRBY', acc, kind .. '|' .. cid, v)
  if ctype ~= '' then redis.call('HINCRBY', acc, kind .. '|' .. ctype .. '|' .. cid, v) end
end
local function zadd_count(board, member, v)
  if v == 0 then return end
  local s = tonumber(redis.call('ZINCRBY', board, v, member))
  if s <= 0 then redis.call('ZREM', board, member) end
end

-- 2. expiry
local gone = redis.call('ZRANGEBYSCORE', idx, '-inf', '(' .. lo)
for _, b in ipairs(gone) do
  local bk = P .. 'w:b:' .. b
  local h = redis.call('HGETALL', bk)
  for i = 1, #h, 2 do
    local f, v = h[i], tonumber(h[i + 1])
    local kind, rest = string.sub(f, 1, 1), string.sub(f, 3)
    if kind == 'm' or kind == 'n' then
      local ctype, cid = string.match(rest, '^([^|]*)|(.*)$')
      acc_add(kind, ctype, cid, -v)
      touch(ctype, cid)
    elseif kind == 'd' then zadd_count(devices, rest, -v)
    elseif kind == 'e' then zadd_count(etypes, rest, -v)
    end
  end
  redis.call('DEL', bk)
end
if #gone > 0 then redis.call('ZREMRANGEBYSCORE', idx, '-inf', '(' .. lo) end

-- TTLs: every key shares one deadline, refreshed at most once a second.
local refresh = expired or deadline - rnow < ttl - 1000
if refresh then deadline = rnow + ttl end
local buckets = {}
local function bucket_key(b)
  local bk = P .. 'w:b:' .. b
  if not buckets[b] then
    buckets[b] = true
    redis.call('ZADD', idx, b, b)
  end
  return bk
end

-- 3. apply
local late, refused, held = 0, 0, 0
-- The newest bucket the board counts at this clock: one that starts more than
-- future_skew_ms ahead is held in w:f:<b> until the clock reaches it.
local fut = math.floor((now + tonumber(ARGV[14])) / bsize)
local fidx = P .. 'w:fidx'
local function add_content(bk, ctype, cid, ms, n)
  -- A correction (negative cell) that would take the cell below zero is refused.
  local fm, fn = 'm|' .. ctype .. '|' .. cid, 'n|' .. ctype .. '|' .. cid
  if n < 0 or ms < 0 then
    local cn = tonumber(redis.call('HGET', bk, fn) or '0')
    local cm = tonumber(redis.call('HGET', bk, fm) or '0')
    if cn + n < 0 or cm + ms < 0 then refused = refused + 1; return false end
  end
  local vn = redis.call('HINCRBY', bk, fn, n)
  local vm = redis.call('HINCRBY', bk, fm, ms)
  if vn == 0 and vm == 0 then redis.call('HDEL', bk, fn, fm) end
  return true
end
local function add_count(bk, f, n)
  local cur = tonumber(redis.call('HGET', bk, f) or '0')
  if cur + n < 0 then return false end
  if cur + n == 0 then redis.call('HDEL', bk, f) else redis.call('HINCRBY', bk, f, n) end
  return true
end
local held_keys = {}
local function held_key(b)
  local fk = P .. 'w:f:' .. b
  if not held_keys[b] then held_keys[b] = true; redis.call('ZADD', fidx, b, b) end
  return fk
end
local function content_cell(b, ctype, cid, ms, n)
  if b > fut then
    add_content(held_key(b), ctype, cid, ms, n)
  elseif b >= lo then
    if add_content(bucket_key(b), ctype, cid, ms, n) then
      acc_add('m', ctype, cid, ms)
      acc_add('n', ctype, cid, n)
      touch(ctype, cid)
    end
  end
end
local function count_cell(kind, board, b, member, n)
  if b > fut then
    if add_count(held_key(b), kind .. '|' .. member, n) and kind == 'e' then held = held + n end
  elseif b < lo then
    if kind == 'e' and n > 0 then late = late + n end  -- every event has one event-type cell
  elseif add_count(bucket_key(b), kind .. '|' .. member, n) then
    zadd_count(board, member, n)
  end
end

-- 3a. held buckets whose time has come enter the window (or are late, when
-- the sink did not write while they became due and left the window).
for _, b in ipairs(redis.call('ZRANGEBYSCORE', fidx, '-inf', fut)) do
  local fk = P .. 'w:f:' .. b
  local h = redis.call('HGETALL', fk)
  local nb = tonumber(b)
  local ms_of = {}
  for j = 1, #h, 2 do
    local f = h[j]
    if string.sub(f, 1, 1) == 'm' then ms_of[string.sub(f, 3)] = tonumber(h[j + 1]) end
  end
  for j = 1, #h, 2 do
    local f, v = h[j], tonumber(h[j + 1])
    local kind, rest = string.sub(f, 1, 1), string.sub(f, 3)
    if kind == 'n' then
      local ctype, cid = string.match(rest, '^([^|]*)|(.*)$')
      content_cell(nb, ctype, cid, ms_of[rest] or 0, v)
    elseif kind == 'd' then count_cell('d', devices, nb, rest, v)
    elseif kind == 'e' then count_cell('e', etypes, nb, rest, v)
    end
  end
  redis.call('DEL', fk)
end
redis.call('ZREMRANGEBYSCORE', fidx, '-inf', fut)

-- 3b. this step's cells
local nc, nd, ne = tonumber(ARGV[18]), tonumber(ARGV[19]), tonumber(ARGV[20])
local i = 21
for _ = 1, nc do
  local b, ctype, cid = tonumber(ARGV[i]), ARGV[i + 1], ARGV[i + 2]
  local ms, n = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
  i = i + 5
  content_cell(b, ctype, cid, ms, n)
end
for _ = 1, nd do
  count_cell('d', devices, tonumber(ARGV[i]), ARGV[i + 1], tonumber(ARGV[i + 2]))
  i = i + 3
end
for _ = 1, ne do
  count_cell('e', etypes, tonumber(ARGV[i]), ARGV[i + 1], tonumber(ARGV[i + 2]))
  i = i + 3
end

-- 4. boards, from the exact totals
local tkeys = {}
local seen = {}
for _, pair in ipairs(tlist) do
  local ctype, cid = pair[1], pair[2]
  if not seen[cid] then
    seen[cid] = true
    local n = tonumber(redis.call('HGET', acc, 'n|' .. cid) or '0')
    if n > 0 then
      local ms = tonumber(redis.call('HGET', acc, 'm|' .. cid) or '0')
      redis.call('ZADD', top, string.format('%.3f', ms / 1000), cid)
      redis.call('ZADD', events, n, cid)
    else
      redis.call('HDEL', acc, 'n|' .. cid, 'm|' .. cid)
      redis.call('ZREM', top, cid)
      redis.call('ZREM', events, cid)
    end
  end
  if ctype ~= '' then
    local tk = top .. ':' .. ctype
    local n = tonumber(redis.call('HGET', acc, 'n|' .. ctype .. '|' .. cid) or '0')
    if n > 0 then
      local ms = tonumber(redis.call('HGET', acc, 'm|' .. ctype .. '|' .. cid) or '0')
      redis.call('ZADD', tk, string.format('%.3f', ms / 1000), cid)
    else
      redis.call('HDEL', acc, 'n|' .. ctype .. '|' .. cid, 'm|' .. ctype .. '|' .. cid)
      redis.call('ZREM', tk, cid)
    end
    if not tkeys[tk] then tkeys[tk] = true; redis.call('SADD', types, ctype) end
  end
end

-- 5. position, freshness, stats, TTLs
local newest_ev = tonumber(ARGV[11])
local newest_cm = tonumber(ARGV[12])
local fields = {'lo', lo, 'updated_ms', now}
if pos ~= '' then fields[#fields + 1] = pf; fields[#fields + 1] = pos end
if newest_ev > 0 and math.floor(newest_ev / bsize) >= lo and newest_ev > (tonumber(m[5] or '0') or 0) then
  fields[#fields + 1] = 'newest_event_ms'; fields[#fields + 1] = newest_ev
end
if newest_cm > (tonumber(m[6] or '0') or 0) then
  fields[#fields + 1] = 'newest_commit_ms'; fields[#fields + 1] = newest_cm
end
if refresh then fields[#fields + 1] = 'deadline'; fields[#fields + 1] = deadline end
redis.call('HSET', meta, unpack(fields))

local counted = {'events', 13, 'uncorrectable', 15, 'corrections', 16, 'null_content', 17}
for j = 1, #counted, 2 do
  local v = tonumber(ARGV[counted[j + 1]])
  if counted[j] == 'uncorrectable' then v = v + refused end
  if v ~= 0 then redis.call('HINCRBY', stats, counted[j], v) end
end
if late > 0 then redis.call('HINCRBY', stats, 'late', late) end
if held ~= 0 then redis.call('HINCRBY', stats, 'future', held) end
if pos ~= '' then redis.call('HINCRBY', stats, 'batches', 1) end

local fixed = {idx, acc, types, top, events, devices, etypes}
for _, k in ipairs(fixed) do redis.call('PEXPIREAT', k, deadline) end
for k, _ in pairs(tkeys) do redis.call('PEXPIREAT', k, deadline) end
-- After the writes: a bucket created by this script did not exist before its
-- HINCRBY, so an earlier PEXPIREAT would have been a no-op (a key without TTL).
for b, _ in pairs(buckets) do redis.call('PEXPIREAT', P .. 'w:b:' .. b, deadline) end
-- A held bucket lives until it has left the window (plus the state TTL, should
-- no sink write again), counted in Redis' clock from the sink's.
local fdeadline = 0
for b, _ in pairs(held_keys) do
  local d = rnow + ((b + 1) * bsize + window - now) + ttl
  if d > fdeadline then fdeadline = d end
  redis.call('PEXPIREAT', P .. 'w:f:' .. b, d)
end
if fdeadline > 0 then
  local left = redis.call('PTTL', fidx)
  if left < 0 or rnow + left < fdeadline then redis.call('PEXPIREAT', fidx, fdeadline) end
end
if refresh then
  for _, ctype in ipairs(redis.call('SMEMBERS', types)) do redis.call('PEXPIREAT', top .. ':' .. ctype, deadline) end
  for _, b in ipairs(redis.call('ZRANGE', idx, 0, -1)) do redis.call('PEXPIREAT', P .. 'w:b:' .. b, deadline) end
  redis.call('PEXPIRE', meta, meta_ttl)
  redis.call('PEXPIRE', stats, meta_ttl)
end
return {'OK', pos ~= '' and pos or stored, late, refused, held}
"""

# KEYS[1] meta, KEYS[2] stats; ARGV: prefix, label, new epoch, now_ms, window_ms, bucket_ms, meta_ttl_ms,
# position field.
OPEN = r"""
local meta, stats = KEYS[1], KEYS[2]
local P, label, new_epoch = ARGV[1], ARGV[2], ARGV[3]
local now, window, bsize, meta_ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local pf = ARGV[8]
local m = redis.call('HMGET', meta, 'epoch', pf, 'rebuilt_position')
if m[1] then
  local stored = m[2] or ''
  if m[3] and m[3] > stored then stored = m[3] end  -- a rebuild covers an instance without a field yet
  return {'EXISTING', m[1], stored}
end
-- No meta: a first start, or a Redis that lost Pulse's keys. Start a clean
-- board: leftovers of an earlier life under this prefix must not be merged.
local idx, types, top = P .. 'w:idx', P .. 'w:types', P .. 'top:' .. label
for _, b in ipairs(redis.call('ZRANGE', idx, 0, -1)) do redis.call('DEL', P .. 'w:b:' .. b) end
for _, b in ipairs(redis.call('ZRANGE', P .. 'w:fidx', 0, -1)) do redis.call('DEL', P .. 'w:f:' .. b) end
for _, ctype in ipairs(redis.call('SMEMBERS', types)) do redis.call('DEL', top .. ':' .. ctype) end
redis.call('DEL', idx, P .. 'w:fidx', types, top, P .. 'w:acc', P .. 'events:' .. label,
           P .. 'devices:' .. label, P .. 'event_types:' .. label)
redis.call('HSET', meta, 'epoch', new_epoch, pf, '', 'lo', math.floor((now - window) / bsize),
           'created_ms', now, 'complete_from_ms', now + window + bsize, 'updated_ms', now)
redis.call('PEXPIRE', meta, meta_ttl)
redis.call('HINCRBY', stats, 'boards_created', 1)
redis.call('PEXPIRE', stats, meta_ttl)
return {'CREATED', new_epoch, ''}
"""

# Rebuild: take, renew or release the pause. KEYS[1] meta; ARGV: mode ('take', 'renew', 'release'), token,
# timeout_ms, meta_ttl_ms. Answers {state, holder, until_ms, now_ms} in Redis' TIME: `take` gives BUSY while
# another rebuild's pause is unexpired; `renew` gives EXPIRED when this token no longer holds a valid pause
# (live sinks may have written since: the rebuild must not swap).
PAUSE = r"""
local meta = KEYS[1]
local mode, token = ARGV[1], ARGV[2]
local timeout, meta_ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local m = redis.call('HMGET', meta, 'pause_token', 'pause_until_ms')
local holder, until_ms = m[1] or '', tonumber(m[2] or '0') or 0
local valid = holder ~= '' and until_ms > now
if mode == 'release' then
  if holder ~= token then return {'NOT_HELD', holder, until_ms, now} end
  redis.call('HDEL', meta, 'pause_token', 'pause_until_ms')
  return {'RELEASED', holder, until_ms, now}
end
if mode == 'renew' then
  if holder ~= token or not valid then return {'EXPIRED', holder, until_ms, now} end
elseif valid then
  return {'BUSY', holder, until_ms, now}
end
redis.call('HSET', meta, 'pause_token', token, 'pause_until_ms', now + timeout)
-- On a lost board the pause creates the meta hash (no epoch: a sink that
-- writes after the pause expires still sees LOST); it must not live forever.
if redis.call('PTTL', meta) < 0 then redis.call('PEXPIRE', meta, meta_ttl) end
return {'OK', token, now + timeout, now}
"""

# Rebuild, the swap's first step (queued in one MULTI with APPLY in swap mode): check that this rebuild
# still holds an unexpired pause (else EXPIRED, nothing changed: live sinks may have written past the
# snapshot), clear the window's keys, keep (or create) the epoch and mark it rebuilt, store the rebuild
# position in every instance's position field and as `rebuilt_position` (the floor of fields that do not
# exist yet), lift the pause and leave the token for APPLY. KEYS[1] meta, KEYS[2] stats; ARGV: prefix,
# label, new epoch (used when none exists), now_ms, window_ms, bucket_ms, meta_ttl_ms, position field,
# rebuild position, pause token.
RESET = r"""
local meta, stats = KEYS[1], KEYS[2]
local P, label, new_epoch = ARGV[1], ARGV[2], ARGV[3]
local now, window, bsize, meta_ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local pf, pos, token = ARGV[8], ARGV[9], ARGV[10]
local m = redis.call('HMGET', meta, 'epoch', 'pause_token', 'pause_until_ms')
local t = redis.call('TIME')
local rnow = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if m[2] ~= token or (tonumber(m[3] or '0') or 0) <= rnow then
  return {'EXPIRED', m[2] or '', tonumber(m[3] or '0') or 0, rnow}
end
local epoch = m[1] or new_epoch
local idx, types, top = P .. 'w:idx', P .. 'w:types', P .. 'top:' .. label
for _, b in ipairs(redis.call('ZRANGE', idx, 0, -1)) do redis.call('DEL', P .. 'w:b:' .. b) end
for _, b in ipairs(redis.call('ZRANGE', P .. 'w:fidx', 0, -1)) do redis.call('DEL', P .. 'w:f:' .. b) end
for _, ctype in ipairs(redis.call('SMEMBERS', types)) do redis.call('DEL', top .. ':' .. ctype) end
redis.call('DEL', idx, P .. 'w:fidx', types, top, P .. 'w:acc', P .. 'events:' .. label,
           P .. 'devices:' .. label, P .. 'event_types:' .. label)
for _, f in ipairs(redis.call('HKEYS', meta)) do
  if string.sub(f, 1, 8) == 'position' then redis.call('HSET', meta, f, pos) end
end
redis.call('HSET', meta, 'epoch', epoch, pf, pos, 'lo', math.floor((now - window) / bsize),
           'complete_from_ms', now, 'updated_ms', now, 'rebuilt_ms', now, 'rebuilt_epoch', epoch,
           'rebuilt_position', pos, 'swap_token', token)
redis.call('HDEL', meta, 'pause_token', 'pause_until_ms')
redis.call('PEXPIRE', meta, meta_ttl)
redis.call('HINCRBY', stats, 'rebuilds', 1)
redis.call('PEXPIRE', stats, meta_ttl)
return {'OK', epoch}
"""

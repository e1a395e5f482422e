//! The Lua scripts: each runs atomically on the server (and reaches the AOF and replicas
//! as one MULTI/EXEC of its effects), which is what makes publish dedupe, owner-checked
//! settlement and the dead-letter move safe on Redis 7.0.

use std::sync::LazyLock;

use redis::Script;

/// Publish a batch. KEYS: stream, config, then the dedupe record of each producer of the
/// batch. ARGV: window, message count, then per message: the index (in KEYS) of its
/// dedupe record, its sequence, its payload size, the number of fields, the fields.
/// Answers `{"topic_not_found"}`, or per message `{status, detail}`: `new` + entry id,
/// `dup` + the original's entry id, `too_large` + the limit, `too_old` + the newest
/// sequence remembered.
///
/// A producer's highest remembered sequence is read once per batch and kept up to date
/// in the script: a sequence above it (every fresh publish) cannot be a duplicate, so
/// it costs the XADD and the ZADD only; the lookup runs for sequences at or below it (a
/// retry). Each record is trimmed to the window once, at the end.
pub(crate) static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[2]) == 0 then return {'topic_not_found'} end
local max_bytes = tonumber(redis.call('HGET', KEYS[2], 'max_message_bytes') or '0') or 0
local window = tonumber(ARGV[1])
local out = {}
local top, top_text, touched = {}, {}, {}
local i = 3
for m = 1, tonumber(ARGV[2]) do
  local dk = KEYS[tonumber(ARGV[i])]
  local seq_text = ARGV[i + 1]
  local seq = tonumber(seq_text)
  local size = tonumber(ARGV[i + 2])
  local n = tonumber(ARGV[i + 3])
  local first = i + 4
  i = first + n
  if max_bytes > 0 and size > max_bytes then
    out[m] = {'too_large', tostring(max_bytes)}
  else
    if top[dk] == nil then
      local r = redis.call('ZRANGE', dk, 0, 0, 'REV', 'WITHSCORES')
      if #r > 0 then top[dk] = tonumber(r[2]); top_text[dk] = r[2] else top[dk] = false end
    end
    local t = top[dk]
    local hit = {}
    if t and seq <= t then
      hit = redis.call('ZRANGE', dk, seq, seq, 'BYSCORE', 'LIMIT', 0, 1)
    end
    if #hit > 0 then
      local sp = string.find(hit[1], ' ', 1, true)
      out[m] = {'dup', string.sub(hit[1], sp + 1)}
    elseif t and seq <= t - window then
      out[m] = {'too_old', top_text[dk]}
    else
      local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, first, first + n - 1))
      redis.call('ZADD', dk, seq, seq_text .. ' ' .. id)
      if not t or seq > t then top[dk] = seq; top_text[dk] = seq_text end
      if not touched[dk] then touched[dk] = true; touched[#touched + 1] = dk end
      out[m] = {'new', id}
    end
  end
end
for _, dk in ipairs(touched) do
  local card = redis.call('ZCARD', dk)
  if card > window then redis.call('ZREMRANGEBYRANK', dk, 0, card - window - 1) end
end
return out
"#,
    )
});

/// The owner check every settlement starts with (XACK itself checks nothing): the entry
/// must still be pending for this group, owned by the receipt's consumer, with the
/// receipt's delivery count. 0: not pending (settled before); -1: someone else's now.
const OWNER_CHECK: &str = r#"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 then return 0 end
if p[1][2] ~= ARGV[3] or tostring(p[1][4]) ~= ARGV[4] then return -1 end
"#;

/// Ack. KEYS: stream. ARGV: group, entry id, consumer, delivery count. 1: acked.
pub(crate) static ACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{OWNER_CHECK}\nredis.call('XACK', KEYS[1], ARGV[1], ARGV[2])\nreturn 1"
    ))
});

/// Ack many: the owner check and XACK for each (id, consumer, count) triple after the
/// group in ARGV. KEYS: stream. Answers one 1 / 0 / -1 per triple, in order.
///
/// The common batch — one session's receipts, so one consumer — is checked with one
/// XPENDING over the batch's id range for that consumer (its pending entries there are
/// at most its credit window) and acked with one XACK per 1 000 ids. A receipt that
/// range does not show (another consumer's now, settled before, or past a truncated
/// answer) gets the entry's own XPENDING, as does every receipt of a mixed batch.
pub(crate) static ACK_MANY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local function id_less(a, b)
  local da, db = string.find(a, '-', 1, true), string.find(b, '-', 1, true)
  local ma, mb = tonumber(string.sub(a, 1, da - 1)), tonumber(string.sub(b, 1, db - 1))
  if ma ~= mb then return ma < mb end
  return tonumber(string.sub(a, da + 1)) < tonumber(string.sub(b, db + 1))
end
local group = ARGV[1]
local consumer = ARGV[3]
local lo, hi = ARGV[2], ARGV[2]
local n = 0
for i = 2, #ARGV, 3 do
  n = n + 1
  if ARGV[i + 1] ~= consumer then consumer = nil end
  if id_less(ARGV[i], lo) then lo = ARGV[i] end
  if id_less(hi, ARGV[i]) then hi = ARGV[i] end
end
local held = {}
if consumer and n > 1 then
  local limit = n + 1000
  for _, p in ipairs(redis.call('XPENDING', KEYS[1], group, lo, hi, limit, consumer)) do
    held[p[1]] = tostring(p[4])
  end
end
local out, ack, acked = {}, {}, {}
for i = 2, #ARGV, 3 do
  local id, who, count = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local verdict
  if acked[id] then
    verdict = 0 -- the same receipt twice in one batch: settled by the first
  elseif held[id] ~= nil and held[id] == count then
    verdict = 1
  else
    local p = redis.call('XPENDING', KEYS[1], group, id, id, 1)
    if #p == 0 then verdict = 0
    elseif p[1][2] ~= who or tostring(p[1][4]) ~= count then verdict = -1
    else verdict = 1 end
  end
  if verdict == 1 then ack[#ack + 1] = id; acked[id] = true end
  out[#out + 1] = verdict
end
for s = 1, #ack, 1000 do
  redis.call('XACK', KEYS[1], group, unpack(ack, s, math.min(s + 999, #ack)))
end
return out
"#,
    )
});

/// Nack with a delay: the entry stays pending but its idle time is set to
/// `lease − delay` (ARGV[5]), so the reclaim loops (XAUTOCLAIM, min idle = the lease)
/// take it back once `delay` has passed. JUSTID: the claim itself counts no delivery.
/// KEYS: stream. ARGV: group, entry id, consumer, delivery count, idle ms. 1: done.
pub(crate) static NACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{OWNER_CHECK}\nredis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'IDLE', ARGV[5], 'JUSTID')\nreturn 1"
    ))
});

/// Dead-letter: copy the entry to the dead-letter stream with the layer's fields, count
/// it, and XACK the original — all or nothing. KEYS: stream, dlq, dlq count. ARGV:
/// group, entry id, consumer, delivery count, reason, attempts, first delivered ms (or
/// ""), last delivered ms, now ms. Answers the dead letter's id.
pub(crate) static DEAD_LETTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{OWNER_CHECK}
local skip = {{['surety.reason']=1, ['surety.attempts']=1, ['surety.first-delivered']=1,
  ['surety.last-delivered']=1, ['surety.dead-lettered']=1, ['surety.for-group']=1,
  ['surety.origin']=1}}
local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
local out = {{}}
if #e > 0 then
  local f = e[1][2]
  for k = 1, #f, 2 do
    if not skip[f[k]] then out[#out + 1] = f[k]; out[#out + 1] = f[k + 1] end
  end
end
out[#out + 1] = 'surety.reason'; out[#out + 1] = ARGV[5]
out[#out + 1] = 'surety.attempts'; out[#out + 1] = ARGV[6]
if ARGV[7] ~= '' then out[#out + 1] = 'surety.first-delivered'; out[#out + 1] = ARGV[7] end
out[#out + 1] = 'surety.last-delivered'; out[#out + 1] = ARGV[8]
out[#out + 1] = 'surety.dead-lettered'; out[#out + 1] = ARGV[9]
out[#out + 1] = 'surety.for-group'; out[#out + 1] = ARGV[1]
out[#out + 1] = 'surety.origin'; out[#out + 1] = 'e' .. ARGV[2]
local id = redis.call('XADD', KEYS[2], '*', unpack(out))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
return id
"#
    ))
});

/// Take over entries idle past the lease, with their delivery counts. KEYS: stream.
/// ARGV: group, consumer, min idle ms, count, cursor. Answers `{next cursor, {{id,
/// fields, count}, ...}}`.
pub(crate) static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[5], 'COUNT', ARGV[4])
local out = {}
for _, e in ipairs(r[2]) do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1)
  local n = 1
  if #p > 0 then n = p[1][4] end
  out[#out + 1] = {e[1], e[2], n}
end
return {r[1], out}
"#,
    )
});

/// Resend dead letters of one group: XADD each back to the topic marked for that group
/// (attempts and first delivery kept), delete it from the dead letters, count it down.
/// KEYS: stream, dlq, dlq count. ARGV: group, then dead-letter ids. Answers how many.
pub(crate) static RESEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local skip = {['surety.reason']=1, ['surety.last-delivered']=1, ['surety.dead-lettered']=1,
  ['surety.for-group']=1, ['surety.origin']=1}
local n = 0
for i = 2, #ARGV do
  local e = redis.call('XRANGE', KEYS[2], ARGV[i], ARGV[i])
  if #e > 0 then
    local f = e[1][2]
    local grp = nil
    local out = {}
    for k = 1, #f, 2 do
      if f[k] == 'surety.for-group' then grp = f[k + 1] end
      if not skip[f[k]] then out[#out + 1] = f[k]; out[#out + 1] = f[k + 1] end
    end
    if grp == ARGV[1] then
      out[#out + 1] = 'surety.for-group'; out[#out + 1] = ARGV[1]
      redis.call('XADD', KEYS[1], '*', unpack(out))
      redis.call('XDEL', KEYS[2], ARGV[i])
      redis.call('HINCRBY', KEYS[3], ARGV[1], -1)
      n = n + 1
    end
  end
end
return n
"#,
    )
});

/// Purge dead letters of one group. KEYS: dlq, dlq count. ARGV: group, then ids.
pub(crate) static PURGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local n = 0
for i = 2, #ARGV do
  local e = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
  if #e > 0 then
    local f = e[1][2]
    for k = 1, #f, 2 do
      if f[k] == 'surety.for-group' and f[k + 1] == ARGV[1] then
        redis.call('XDEL', KEYS[1], ARGV[i])
        redis.call('HINCRBY', KEYS[2], ARGV[1], -1)
        n = n + 1
      end
    end
  end
end
return n
"#,
    )
});

/// Forget a consumer that holds nothing: XGROUP DELCONSUMER drops the consumer's pending
/// entries with it (as if acked), so only one with none is deleted. KEYS: stream. ARGV:
/// group, consumer. 1: deleted; 0: it still holds entries (they are reclaimed after
/// their lease, and the consumer is left).
pub(crate) static FORGET_CONSUMER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #p > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"#,
    )
});

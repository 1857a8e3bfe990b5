-- Number an event, append it to the history of each channel, and publish it.
-- Returns {epoch, seq}.
-- KEYS[1] the sequencer, then (history, meta) per channel.
-- ARGV: candidate epoch, history size, history ttl (ms), frame head, frame tail,
--       application id ('' = hub-assigned), event marker, then one topic per channel.
-- The frame is head .. 'id: ' .. id .. '\n' .. tail; the message is the codec's
-- "event" form, 'm <seq> <marker>\n<id>\n<frame>', built here because only the
-- script knows the sequence number. An application id already in a history
-- replaces the event stored under it.
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  -- The history is gone (new Redis, flushed): a new epoch makes old ids unresumable.
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0)
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local id = ARGV[6]
if id == '' then id = epoch .. '-' .. seq end
local frame = ARGV[4] .. 'id: ' .. id .. '\n' .. ARGV[5]
local size, ttl = tonumber(ARGV[2]), ARGV[3]
local message = 'm ' .. seq .. ' ' .. ARGV[7] .. '\n' .. id .. '\n' .. frame
for k = 1, (#KEYS - 1) / 2 do
  local history, meta = KEYS[2 * k], KEYS[2 * k + 1]
  if size > 0 then
    if redis.call('HGET', meta, 'epoch') ~= epoch then
      redis.call('DEL', history)
      redis.call('HSET', meta, 'epoch', epoch, 'evicted', 0)
    end
    if ARGV[6] ~= '' then
      -- An id the application chose replaces its stored copy (sse-channel's history).
      for _, entry in ipairs(redis.call('XRANGE', history, '-', '+')) do
        if entry[2][4] == id then redis.call('XDEL', history, entry[1]) end
      end
    end
    local over = redis.call('XLEN', history) + 1 - size
    if over > 0 then
      local gone = redis.call('XRANGE', history, '-', '+', 'COUNT', over)
      redis.call('HSET', meta, 'evicted', string.match(gone[#gone][1], '^%d+'))
    end
    local added = redis.pcall('XADD', history, 'MAXLEN', size, seq .. '-0', 'f', frame, 'i', id)
    if type(added) == 'table' and added.err then
      -- Entries newer than the sequencer: a history that outlived its epoch.
      redis.call('DEL', history)
      redis.call('XADD', history, 'MAXLEN', size, seq .. '-0', 'f', frame, 'i', id)
    end
    redis.call('PEXPIRE', history, ttl)
    redis.call('PEXPIRE', meta, ttl)
  end
  redis.call('PUBLISH', ARGV[7 + k], message)
end
return {epoch, seq}

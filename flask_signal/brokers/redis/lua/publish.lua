-- Number a batch of events, append each to the history of each of its channels, and
-- publish it. Returns {epoch, seq of the batch's last event}: its events are numbered
-- one after the other, in order, ending there.
-- KEYS[1] the sequencer, then per event, (history, meta) per channel of it.
-- ARGV: candidate epoch, history size, history ttl (ms), then per event: frame head,
--       frame tail, application id ('' = hub-assigned), event marker, channel count, then
--       one topic per channel.
-- The frame is head .. 'id: ' .. id .. '\n' .. tail; the message is the codec's
-- "event" form, 'm <seq> <marker>\n<id>\n<frame>', built here because only the
-- script knows the sequence number. An application id already in a history
-- replaces the event stored under it.
local size, ttl = tonumber(ARGV[2]), ARGV[3]
local events, arg = 0, 4
while arg <= #ARGV do
  events = events + 1
  arg = arg + 5 + tonumber(ARGV[arg + 4])
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  -- The history is gone (new Redis, flushed): a new epoch makes old ids unresumable.
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0)
end
local last = redis.call('HINCRBY', KEYS[1], 'seq', events)
local seq = last - events
local key = 2
arg = 4
while arg <= #ARGV do
  seq = seq + 1
  local app_id, marker, channels = ARGV[arg + 2], ARGV[arg + 3], tonumber(ARGV[arg + 4])
  local id = app_id
  if id == '' then id = epoch .. '-' .. seq end
  local frame = ARGV[arg] .. 'id: ' .. id .. '\n' .. ARGV[arg + 1]
  local message = 'm ' .. seq .. ' ' .. marker .. '\n' .. id .. '\n' .. frame
  for k = 1, channels do
    local history, meta = KEYS[key], KEYS[key + 1]
    key = key + 2
    if size > 0 then
      if redis.call('HGET', meta, 'epoch') ~= epoch then
        redis.call('DEL', history)
        redis.call('HSET', meta, 'epoch', epoch, 'evicted', 0)
      end
      if app_id ~= '' then
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
    redis.call('PUBLISH', ARGV[arg + 4 + k], message)
  end
  arg = arg + 5 + channels
end
return {epoch, last}

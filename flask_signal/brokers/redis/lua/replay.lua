-- Read what a subscriber missed: the events after its Last-Event-ID on its channels.
-- KEYS[1] the sequencer, then (history, meta) per channel.
-- ARGV: Last-Event-ID, and its epoch and sequence number if it has the hub's form (else '').
-- Returns {epoch or false, current seq, lost (0/1), resume point, seq, frame, seq, frame...}.
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local current = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local wanted, head, tail = ARGV[1], ARGV[2], ARGV[3]
local n = (#KEYS - 1) / 2
local live = {}
for k = 1, n do
  live[k] = epoch and redis.call('HGET', KEYS[2 * k + 1], 'epoch') == epoch
end
local after = nil
if epoch and head == epoch and tail ~= '' then
  local seq = tonumber(tail)
  if seq <= current then after = seq end
elseif epoch then
  -- An id the application chose: the latest event that carries it.
  for k = 1, n do
    if live[k] and not after then
      for _, entry in ipairs(redis.call('XREVRANGE', KEYS[2 * k], '+', '-')) do
        if entry[2][4] == wanted then
          after = tonumber(string.match(entry[1], '^%d+'))
          break
        end
      end
    end
  end
end
-- '0' asks for everything, unless it is an application id (a counter from 0) kept here.
if not after and wanted == '0' then after = 0 end
local lost = 0
if not after then
  lost = 1
  after = 0
end
local out = {epoch or false, current, 0, after}
for k = 1, n do
  if live[k] then
    local evicted = tonumber(redis.call('HGET', KEYS[2 * k + 1], 'evicted') or '0')
    if after < evicted and wanted ~= '0' then lost = 1 end
    for _, entry in ipairs(redis.call('XRANGE', KEYS[2 * k], '(' .. after .. '-0', '+')) do
      out[#out + 1] = string.match(entry[1], '^%d+')
      out[#out + 1] = entry[2][2]
    end
  end
end
out[3] = lost
return out

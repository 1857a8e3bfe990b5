-- What a process missed of a swarm while its pub/sub connection was down: the logged
-- messages after the last one it applied (see log.lua).
-- KEYS[1] the swarm hash, KEYS[2] its log. ARGV[1] the number of the last message applied.
-- Returns {lost (1 if the log no longer reaches back to it, else 0), then the messages
-- after it, in order}.
local after = tonumber(ARGV[1])
local last = redis.call('LINDEX', KEYS[2], -1)
if not last then
  -- No log (expired, or never written): anything numbered since is lost.
  local n = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
  return {n > after and 1 or 0}
end
local newest = tonumber(string.match(last, '^#(%d+)'))
if newest <= after then return {0} end
local first = newest - redis.call('LLEN', KEYS[2]) + 1
local out = redis.call('LRANGE', KEYS[2], math.max(after + 1 - first, 0), -1)
table.insert(out, 1, first > after + 1 and 1 or 0)
return out

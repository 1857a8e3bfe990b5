-- Wrapped around every script that changes state, so that it takes effect at most once.
-- The caller appends the operation's key to KEYS and how long to remember it (ms) to
-- ARGV. A copy of an operation that already ran returns the first run's result, and
-- one that settle.lua marked as not run does nothing.
local op = table.remove(KEYS)
local remember = table.remove(ARGV)
local done = redis.call('GET', op)
if done then
  if done == '' then return redis.error_reply('SETTLED operation settled as not run') end
  return cjson.decode(done)
end
local result = (function()
--BODY--
end)()
redis.call('SET', op, cjson.encode(result), 'PX', remember)
return result

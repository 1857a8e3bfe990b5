-- Settle an operation whose caller could not learn its outcome (Redis did not answer).
-- Returns {1, result as JSON} if the operation ran, else {0}: it is then marked so that
-- a copy still on its way to Redis does nothing when it arrives.
-- KEYS[1] the operation's key. ARGV[1] how long to remember it (ms).
local done = redis.call('GET', KEYS[1])
if done then return {1, done} end
redis.call('SET', KEYS[1], '', 'PX', ARGV[1])
return {0}

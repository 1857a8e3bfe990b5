-- Check a signal's sender and addressee, then publish it. Returns a Delivery value:
-- 200 sent, 404 no such swarm, 401 unknown token, 4040 no such peer.
-- KEYS[1] the swarm hash.
-- ARGV: token digest ('' = trusted), addressee cid ('' = everyone), topic, message (codec).
-- One HMGET answers all three questions; a swarm hash always has its initiator "i".
local found = redis.call('HMGET', KEYS[1], 'i', 't:' .. ARGV[1], 'k:' .. ARGV[2])
if not found[1] then return 404 end
if ARGV[1] ~= '' and not found[2] then return 401 end
if ARGV[2] ~= '' and not found[3] then return 4040 end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 200

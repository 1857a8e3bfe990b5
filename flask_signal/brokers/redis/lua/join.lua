-- Add a peer to a swarm and announce it. Returns 1, or 0 if there is no such swarm.
-- KEYS[1] the swarm hash, KEYS[2] this process's peer set.
-- ARGV: cid, token digest, process, topic, peer entry, "joined" message (codec).
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local cid, digest = ARGV[1], ARGV[2]
redis.call('HSET', KEYS[1], 'p:' .. cid, ARGV[3], 'k:' .. cid, digest, 't:' .. digest, cid)
redis.call('SADD', KEYS[2], ARGV[5])
redis.call('PUBLISH', ARGV[4], ARGV[6])
return 1

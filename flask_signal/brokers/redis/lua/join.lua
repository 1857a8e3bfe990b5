-- Add a peer to a swarm and announce it. Returns 1, or 0 if there is no such swarm.
-- KEYS[1] the swarm hash, KEYS[2] this process's peer set, KEYS[3] the swarm's grace set.
-- ARGV: cid, token digest, process, topic, peer entry, "joined" message (codec),
--       then with resume on: the initiator's "join" frame, queue cap (bytes), grace (ms).
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local cid, digest = ARGV[1], ARGV[2]
redis.call('HSET', KEYS[1], 'p:' .. cid, ARGV[3], 'k:' .. cid, digest, 't:' .. digest, cid)
redis.call('SADD', KEYS[2], ARGV[5])
if ARGV[7] then
  local initiator = redis.call('HGET', KEYS[1], 'i')
  if redis.call('SISMEMBER', KEYS[3], initiator) == 1 then
    keep(KEYS[1], initiator, ARGV[7], ARGV[8], ARGV[9])
  end
end
redis.call('PUBLISH', ARGV[4], ARGV[6])
return 1

-- Remove a peer from its swarm and from its process's peer set.
-- Returns 0: not a peer (any more), 1: a peer left, 2: the initiator left and the swarm ended.
-- KEYS[1] the swarm hash, KEYS[2] the owner process's peer set.
-- ARGV: cid, topic, peer entry, "left" message, "ended" message (codec).
local cid = ARGV[1]
redis.call('SREM', KEYS[2], ARGV[3])
local initiator = redis.call('HGET', KEYS[1], 'i')
if not initiator then return 0 end
if initiator == cid then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[5])
  return 2
end
local digest = redis.call('HGET', KEYS[1], 'k:' .. cid)
if not digest then return 0 end
redis.call('HDEL', KEYS[1], 'p:' .. cid, 'k:' .. cid, 't:' .. digest)
redis.call('PUBLISH', ARGV[2], ARGV[4])
return 1

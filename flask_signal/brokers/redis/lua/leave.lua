-- Remove a peer from its swarm and from its process's peer set.
-- Returns 0: not a peer (any more), 1: a peer left, 2: the initiator left and the swarm ended.
-- KEYS[1] the swarm hash, KEYS[2] the owner process's peer set, KEYS[3] the grace set.
-- ARGV: cid, topic, peer entry, "left" message, "ended" message (codec), then optionally:
--       the resume key digest the peer must still be in its grace with ('' = any), the
--       initiator's "leave" frame, queue cap (bytes), grace (ms).
-- With a digest this is the end of a grace: it does nothing if the peer resumed or left
-- meanwhile, so every process may try it and the peer leaves once.
local cid = ARGV[1]
if ARGV[6] and ARGV[6] ~= '' and redis.call('HGET', KEYS[1], 'g:' .. cid) ~= ARGV[6] then
  return 0
end
redis.call('SREM', KEYS[2], ARGV[3])
local initiator = redis.call('HGET', KEYS[1], 'i')
if not initiator then return 0 end
if initiator == cid then
  if ARGV[6] then
    for _, other in ipairs(redis.call('SMEMBERS', KEYS[3])) do
      redis.call('DEL', KEYS[1] .. ':queue:' .. other, KEYS[1] .. ':kept:' .. other)
    end
    redis.call('DEL', KEYS[3])
  end
  publish(KEYS[1], ARGV[2], ARGV[5])  -- numbered by the hash, so before it goes
  redis.call('DEL', KEYS[1])
  return 2
end
local digest = redis.call('HGET', KEYS[1], 'k:' .. cid)
if not digest then return 0 end
redis.call('HDEL', KEYS[1], 'p:' .. cid, 'k:' .. cid, 't:' .. digest, 'g:' .. cid, 'b:' .. cid,
  'o:' .. cid, 'z:' .. cid, 'r:' .. cid)
if ARGV[6] and redis.call('SREM', KEYS[3], cid) == 1 then
  redis.call('DEL', KEYS[1] .. ':queue:' .. cid, KEYS[1] .. ':kept:' .. cid)
end
if ARGV[7] and ARGV[7] ~= '' and redis.call('SISMEMBER', KEYS[3], initiator) == 1 then
  keep(KEYS[1], initiator, ARGV[7], ARGV[8], ARGV[9])
end
publish(KEYS[1], ARGV[2], ARGV[4])
return 1

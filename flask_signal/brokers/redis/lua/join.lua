-- Add a peer to a swarm and announce it. Returns the number of its "joined" message in
-- the swarm log (log.lua; 1 with the log off), 0 if there is no such swarm, or -1 if
-- it already holds max peers (its peers in their resume grace count).
-- KEYS[1] the swarm hash, KEYS[2] this process's peer set, KEYS[3] the swarm's grace set.
-- ARGV: cid, token digest, process, topic, peer entry, "joined" message (codec),
--       max peers (0 = no limit),
--       then with resume on: the initiator's "join" frame, queue cap (bytes), grace (ms),
--       the peer's resume key digest (kept as 'r:<cid>' for the reaper).
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local most = tonumber(ARGV[7])
if most > 0 then
  -- Counted here, in the script, so that processes joining at once never pass it.
  local peers = 0
  for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.sub(field, 1, 2) == 'k:' then peers = peers + 1 end
  end
  if peers >= most then return -1 end
end
local cid, digest = ARGV[1], ARGV[2]
redis.call('HSET', KEYS[1], 'p:' .. cid, ARGV[3], 'k:' .. cid, digest, 't:' .. digest, cid)
redis.call('SADD', KEYS[2], ARGV[5])
if ARGV[8] then
  redis.call('HSET', KEYS[1], 'r:' .. cid, ARGV[11])
  local initiator = redis.call('HGET', KEYS[1], 'i')
  if redis.call('SISMEMBER', KEYS[3], initiator) == 1 then
    keep(KEYS[1], initiator, ARGV[8], ARGV[9], ARGV[10])
  end
end
return math.max(publish(KEYS[1], ARGV[4], ARGV[6]), 1)

-- A peer's stream was lost, or its process died: keep it in its swarm for the resume
-- grace. Returns 1; 0 if it is not a peer (any more); 2 if that process no longer holds
-- it (it resumed elsewhere, or is in its grace already: a reaper came first).
-- KEYS[1] the swarm hash, KEYS[2] the owner process's peer set, KEYS[3] the grace set,
-- KEYS[4] the peer's kept frames (list), KEYS[5] its queue (list), KEYS[6] its draining
-- mark, KEYS[7] the resume index entry, KEYS[8] the grace deadlines (sorted set).
-- ARGV: cid, resume key digest, base (the number of the frame before the first kept one;
--       -1 for a dead process's peer: unknown), peer entry, grace (ms), swarm ttl (ms),
--       index value and deadline member ("<swarm id> <cid>"), topic, "detached" message
--       (codec), draining (ms), the owner process, then the frames the process still held
--       for it, oldest first.
-- The owner keeps the frames pub/sub brings it until the "detached" message comes back,
-- and adds them (seal.lua); a resume waits while the draining mark lasts.
local cid = ARGV[1]
local found = redis.call('HMGET', KEYS[1], 'k:' .. cid, 'p:' .. cid, 'g:' .. cid)
if not found[1] then return 0 end
if found[2] ~= ARGV[11] or found[3] then return 2 end
local grace = tonumber(ARGV[5])
redis.call('SREM', KEYS[2], ARGV[4])
redis.call('HSET', KEYS[1], 'g:' .. cid, ARGV[2], 'b:' .. cid, ARGV[3])
redis.call('HDEL', KEYS[1], 'o:' .. cid, 'z:' .. cid)
redis.call('SADD', KEYS[3], cid)
redis.call('PEXPIRE', KEYS[3], grace + tonumber(ARGV[6]))
redis.call('DEL', KEYS[4], KEYS[5])
for i = 12, #ARGV do redis.call('RPUSH', KEYS[4], ARGV[i]) end
redis.call('PEXPIRE', KEYS[4], grace)
redis.call('SET', KEYS[6], 1, 'PX', ARGV[10])
redis.call('SET', KEYS[7], ARGV[7], 'PX', grace)
local now = redis.call('TIME')
redis.call('ZADD', KEYS[8], now[1] * 1000 + math.floor(now[2] / 1000) + grace, ARGV[7])
if redis.call('HGET', KEYS[1], 'i') == cid then
  -- The initiator renews the swarm's TTL while connected; in its grace it may not.
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl >= 0 and ttl < grace + tonumber(ARGV[6]) then
    redis.call('PEXPIRE', KEYS[1], grace + tonumber(ARGV[6]))
  end
end
publish(KEYS[1], ARGV[8], ARGV[9])
return 1

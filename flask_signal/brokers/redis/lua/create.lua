-- Create a swarm with its initiator. Returns 1, or 0 if the id is taken.
-- KEYS[1] the swarm hash, KEYS[2] this process's peer set.
-- ARGV: cid, token digest, process, swarm ttl (ms), peer entry ("<swarm id> <cid>"),
--       then with resume on: the resume key digest (kept as 'r:<cid>' for the reaper).
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local cid, digest = ARGV[1], ARGV[2]
redis.call('HSET', KEYS[1], 'i', cid, 'p:' .. cid, ARGV[3], 'k:' .. cid, digest,
  't:' .. digest, cid)
if ARGV[6] then redis.call('HSET', KEYS[1], 'r:' .. cid, ARGV[6]) end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('SADD', KEYS[2], ARGV[5])
return 1

-- A peer in its grace comes back, on this process. Returns {0}: not resumable (unknown,
-- another key, a position never sent); {1}: its previous process is still adding frames,
-- ask again; {2}: frames it missed are gone (it must leave); or {3, number of its last
-- frame, 1 if it is the initiator, the number of its "resumed" message in the swarm log
-- (log.lua; 0 with the log off), then the frames after the position it gave, in order}.
-- KEYS[1] the swarm hash, KEYS[2] the grace set, KEYS[3] its kept frames, KEYS[4] its
-- queue, KEYS[5] its draining mark, KEYS[6] this process's peer set, KEYS[7] the resume
-- index entry, KEYS[8] the grace deadlines.
-- ARGV: cid, resume key digest, position (the number of the last frame it got), process,
--       peer entry, topic, "resumed" message (codec), deadline member.
local cid = ARGV[1]
if redis.call('HGET', KEYS[1], 'g:' .. cid) ~= ARGV[2] then return {0} end
if redis.call('EXISTS', KEYS[5]) == 1 then return {1} end
if redis.call('HGET', KEYS[1], 'o:' .. cid) then return {2} end
local base = tonumber(redis.call('HGET', KEYS[1], 'b:' .. cid))
-- -1: its process died, and what it had sent is unknown here: the client's word is taken.
if base < 0 then base = math.max(tonumber(ARGV[3]), 0) end
local all = redis.call('LRANGE', KEYS[3], 0, -1)
for _, frame in ipairs(redis.call('LRANGE', KEYS[4], 0, -1)) do all[#all + 1] = frame end
local total, seq = base + #all, tonumber(ARGV[3])
if seq > total then return {0} end
if seq < base then return {2} end
redis.call('HDEL', KEYS[1], 'g:' .. cid, 'b:' .. cid, 'o:' .. cid, 'z:' .. cid)
redis.call('HSET', KEYS[1], 'p:' .. cid, ARGV[4])
redis.call('SREM', KEYS[2], cid)
redis.call('DEL', KEYS[3], KEYS[4], KEYS[7])
redis.call('ZREM', KEYS[8], ARGV[8])
redis.call('SADD', KEYS[6], ARGV[5])
local logged = publish(KEYS[1], ARGV[6], ARGV[7])
local out = {3, total, redis.call('HGET', KEYS[1], 'i') == cid and 1 or 0, logged}
for i = seq - base + 1, #all do out[#out + 1] = all[i] end
return out

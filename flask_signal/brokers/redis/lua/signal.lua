-- Check a signal's sender and addressee, then publish it. Returns a Delivery value:
-- 200 sent, 404 no such swarm, 401 unknown token, 4040 no such peer.
-- KEYS[1] the swarm hash, KEYS[2] its set of peers in their resume grace.
-- ARGV: token digest ('' = trusted), addressee cid ('' = everyone), topic, message (codec),
--       then with resume on: the frame, queue cap, grace (ms); else ''.
-- One HMGET answers all three questions; a swarm hash always has its initiator "i".
-- A peer in its grace has no stream: what is addressed to it is kept (keep.lua).
local found = redis.call('HMGET', KEYS[1], 'i', 't:' .. ARGV[1], 'k:' .. ARGV[2])
if not found[1] then return 404 end
if ARGV[1] ~= '' and not found[2] then return 401 end
if ARGV[2] ~= '' and not found[3] then return 4040 end
local frame = ARGV[5]
if frame and frame ~= '' then
  if ARGV[2] ~= '' then
    if redis.call('SISMEMBER', KEYS[2], ARGV[2]) == 1 then
      keep(KEYS[1], ARGV[2], frame, ARGV[6], ARGV[7])
      return 200
    end
  else
    for _, cid in ipairs(redis.call('SMEMBERS', KEYS[2])) do
      keep(KEYS[1], cid, frame, ARGV[6], ARGV[7])
    end
  end
end
publish(KEYS[1], ARGV[3], ARGV[4])
return 200

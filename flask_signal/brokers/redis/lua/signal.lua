-- Check a signal's sender and addressee, then publish it. Returns a Delivery value:
-- 200 sent, 404 no such swarm, 401 unknown token, 4040 no such peer.
-- KEYS[1] the swarm hash, KEYS[2] its set of peers in their resume grace.
-- ARGV: token digest ('' = trusted), addressee cid ('' = everyone), topic, message (codec),
--       then with resume on: queue cap, grace (ms); else nothing.
-- One HMGET answers all three questions; a swarm hash always has its initiator "i".
-- A peer in its grace has no stream: what is addressed to it is kept (keep.lua). The frame
-- kept is the message's, after its first line: it crosses the network once.
local found = redis.call('HMGET', KEYS[1], 'i', 't:' .. ARGV[1], 'k:' .. ARGV[2])
if not found[1] then return 404 end
if ARGV[1] ~= '' and not found[2] then return 401 end
if ARGV[2] ~= '' and not found[3] then return 4040 end
if ARGV[5] then
  local function frame()
    return string.sub(ARGV[4], string.find(ARGV[4], '\n', 1, true) + 1)
  end
  if ARGV[2] ~= '' then
    if redis.call('SISMEMBER', KEYS[2], ARGV[2]) == 1 then
      keep(KEYS[1], ARGV[2], frame(), ARGV[5], ARGV[6])
      return 200
    end
  else
    local kept = redis.call('SMEMBERS', KEYS[2])
    if #kept > 0 then
      local bytes = frame()
      for _, cid in ipairs(kept) do
        keep(KEYS[1], cid, bytes, ARGV[5], ARGV[6])
      end
    end
  end
end
publish(KEYS[1], ARGV[3], ARGV[4])
return 200

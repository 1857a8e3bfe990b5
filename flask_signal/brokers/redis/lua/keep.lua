-- Shared by the scripts that address peers (signal, join, leave); not run on its own.
-- keep(swarm hash, cid, frame, cap, ttl): a frame for a peer in its resume grace goes to
-- its queue (list '<swarm hash>:queue:<cid>'; its bytes counted in 'z:<cid>'); past cap
-- bytes the peer is marked 'o:<cid>' (frames lost) and can no longer resume.
local function keep(hash, cid, frame, cap, ttl)
  local queue = hash .. ':queue:' .. cid
  if redis.call('HINCRBY', hash, 'z:' .. cid, #frame) > tonumber(cap) then
    redis.call('HSET', hash, 'o:' .. cid, 1)
  else
    redis.call('RPUSH', queue, frame)
  end
  redis.call('PEXPIRE', queue, ttl)
end

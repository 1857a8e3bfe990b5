-- The owner of a detached peer got its "detached" message back: add the frames that
-- were on their way to it meanwhile, and let a resume proceed. Returns 1.
-- KEYS[1] the swarm hash, KEYS[2] the peer's kept frames, KEYS[3] its draining mark.
-- ARGV: cid, resume key digest, grace (ms), then the frames, oldest first.
if redis.call('HGET', KEYS[1], 'g:' .. ARGV[1]) == ARGV[2] then
  for i = 4, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
redis.call('DEL', KEYS[3])
return 1

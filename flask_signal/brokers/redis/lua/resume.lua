-- A peer in its grace comes back, on this process. Returns {0}: not resumable (unknown,
-- another key, a position never sent); {1}: its previous process is still adding frames,
-- ask again; {2}: frames it missed are gone (it must leave); or {3, number of its last
-- frame, 1 if it is the initiator, the number of its "resumed" message in the swarm log
-- (log.lua; 0 with the log off), the count L of log entries that follow, L log entries,
-- then the frames after the position it gave, in order}.
-- KEYS[1] the swarm hash, KEYS[2] the grace set, KEYS[3] its kept frames, KEYS[4] its
-- queue, KEYS[5] its draining mark, KEYS[6] this process's peer set, KEYS[7] the resume
-- index entry, KEYS[8] the grace deadlines.
-- ARGV: cid, resume key digest, position (the number of the last frame it got), process,
--       peer entry, topic, "resumed" message (codec), deadline member, the number of the
--       swarm log message that last frame came from ('' if its id carries none).
-- The peer of a process that died (base -1) with a log number: what its process had not
-- written, and what was published for it before the reap, are in the swarm log, from
-- that number to the reaper's "detached" message (the caller keeps what concerns the
-- peer); its queue has what came after. If the log no longer reaches back: {2}.
local cid = ARGV[1]
if redis.call('HGET', KEYS[1], 'g:' .. cid) ~= ARGV[2] then return {0} end
if redis.call('EXISTS', KEYS[5]) == 1 then return {1} end
if redis.call('HGET', KEYS[1], 'o:' .. cid) then return {2} end
local base = tonumber(redis.call('HGET', KEYS[1], 'b:' .. cid))
local seq = tonumber(ARGV[3])
local entries = {}
-- -1: its process died, and what it had sent is unknown here: the client's word is taken.
if base < 0 then
  base = math.max(seq, 0)
  if ARGV[9] and ARGV[9] ~= '' and LOG_ENTRIES > 0 then
    local after = tonumber(ARGV[9])
    local log = redis.call('LRANGE', LOG, 0, -1)
    if #log == 0 then return {2} end
    local first = tonumber(string.match(log[1], '^#(%d+)'))
    if after > first + #log - 1 then return {0} end
    local reaped = nil
    for i = #log, 1, -1 do
      if string.sub(log[i], -(#cid + 3)) == ' g ' .. cid then
        reaped = i
        break
      end
    end
    if not reaped then return {2} end
    if after == 0 and redis.call('HGET', KEYS[1], 'i') ~= cid then
      -- Its id carries no log number. Only its connect frame has none and still tells
      -- where it stands: a peer gets what is published from its own "joined" message on.
      if seq ~= 1 then return {2} end
      for i = 1, reaped do
        if string.sub(log[i], -(#cid + 3)) == ' j ' .. cid then
          after = tonumber(string.match(log[i], '^#(%d+)'))
          break
        end
      end
      if after == 0 then return {2} end
    elseif after == 0 and seq ~= 1 then
      return {2}
    end
    if first > after + 1 then return {2} end
    for i = after + 2 - first, reaped - 1 do entries[#entries + 1] = log[i] end
  end
end
local all = redis.call('LRANGE', KEYS[3], 0, -1)
for _, frame in ipairs(redis.call('LRANGE', KEYS[4], 0, -1)) do all[#all + 1] = frame end
local total = base + #all
if seq > total then return {0} end
if seq < base then return {2} end
redis.call('HDEL', KEYS[1], 'g:' .. cid, 'b:' .. cid, 'o:' .. cid, 'z:' .. cid)
redis.call('HSET', KEYS[1], 'p:' .. cid, ARGV[4])
redis.call('SREM', KEYS[2], cid)
redis.call('DEL', KEYS[3], KEYS[4], KEYS[7])
redis.call('ZREM', KEYS[8], ARGV[8])
redis.call('SADD', KEYS[6], ARGV[5])
local logged = publish(KEYS[1], ARGV[6], ARGV[7])
local out = {3, total, redis.call('HGET', KEYS[1], 'i') == cid and 1 or 0, logged, #entries}
for _, entry in ipairs(entries) do out[#out + 1] = entry end
for i = seq - base + 1, #all do out[#out + 1] = all[i] end
return out

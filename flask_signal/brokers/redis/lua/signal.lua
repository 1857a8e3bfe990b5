-- Check the sender and addressee of each of a batch of signals, then publish it. Returns
-- one character per signal, in order: '0' sent, '1' no such swarm, '2' unknown token,
-- '3' no such peer (a string rather than a list of numbers: Redis's Lua turns every
-- number it hands on, to the reply or to once.lua's cjson, into text with a printf).
-- KEYS: per signal, its swarm's hash, grace set (peers in their resume grace) and log.
-- ARGV: with resume on, queue cap (bytes) and grace (ms), else '' and ''; then per signal
--       its token digest ('' = trusted), addressee cid ('' = everyone), topic and
--       message (codec).
-- The signals of a batch may be of different swarms (hence not for a Redis Cluster);
-- each is checked and published as if alone, in order, so one refused changes nothing
-- for the others. Per signal, one HMGET answers all three questions (a swarm hash
-- always has its initiator "i"). A peer in its grace has no stream: what is addressed
-- to it is kept (keep.lua). The frame kept is the message's after its first line: it
-- crosses the network once.
local cap, grace = ARGV[1], ARGV[2]
local codes = {}
for i = 1, #KEYS / 3 do
  local hash, held, log = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local digest, cid, topic, message = ARGV[4 * i - 1], ARGV[4 * i], ARGV[4 * i + 1], ARGV[4 * i + 2]
  local found = redis.call('HMGET', hash, 'i', 't:' .. digest, 'k:' .. cid)
  local code = '0'
  if not found[1] then
    code = '1'
  elseif digest ~= '' and not found[2] then
    code = '2'
  elseif cid ~= '' and not found[3] then
    code = '3'
  else
    local kept = false
    if cap ~= '' then
      local function frame()
        return string.sub(message, string.find(message, '\n', 1, true) + 1)
      end
      if cid ~= '' then
        if redis.call('SISMEMBER', held, cid) == 1 then
          keep(hash, cid, frame(), cap, grace)
          kept = true
        end
      else
        local others = redis.call('SMEMBERS', held)
        if #others > 0 then
          local bytes = frame()
          for _, other in ipairs(others) do keep(hash, other, bytes, cap, grace) end
        end
      end
    end
    if not kept then publish_to(log, hash, topic, message) end
  end
  codes[i] = code
end
return table.concat(codes)

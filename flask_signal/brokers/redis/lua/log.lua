-- Shared by the scripts that publish on a swarm's topic; not run on its own.
-- The caller appends the log's bounds (entries, bytes, ttl in ms) to ARGV; they are taken
-- off here, so the script's own ARGV stays as its header says.
-- publish_to(log, hash, topic, message) returns the message's number, or 0 with the log
-- off (entries 0): the message is then published as it is. With the log on, the swarm's
-- counter (field 'n' of its hash) numbers the message, which goes to the log (list 'log';
-- its bytes counted in 'nz') and to pub/sub as '#<n> <message>' (codec); past either
-- bound the oldest entries go, the newest always stays.
-- Scripts of one swarm take its log's key from the end of KEYS (log_key.lua).
local LOG_TTL = table.remove(ARGV)
local LOG_BYTES = tonumber(table.remove(ARGV))
local LOG_ENTRIES = tonumber(table.remove(ARGV))
local function publish_to(log, hash, topic, message)
  if LOG_ENTRIES <= 0 then
    redis.call('PUBLISH', topic, message)
    return 0
  end
  local n = redis.call('HINCRBY', hash, 'n', '1')  -- text: a Lua number costs a printf
  local entry = '#' .. n .. ' ' .. message
  local length = redis.call('RPUSH', log, entry)
  local bytes = #entry
  if length == 1 then
    redis.call('HSET', hash, 'nz', bytes)
  else
    bytes = redis.call('HINCRBY', hash, 'nz', bytes)
  end
  if length > LOG_ENTRIES or bytes > LOG_BYTES then
    -- Trimmed to 15/16 of either bound in one go, so that a full log does not cost
    -- every message two more commands.
    local entries = LOG_ENTRIES - math.floor(LOG_ENTRIES / 16)
    local most = LOG_BYTES - math.floor(LOG_BYTES / 16)
    local freed = 0
    while length > 1 and (length > entries or bytes - freed > most) do
      local count = math.min(length - 1, math.max(length - entries, math.ceil(length / 16)))
      for _, old in ipairs(redis.call('LPOP', log, count)) do freed = freed + #old end
      length = length - count
    end
    redis.call('HINCRBY', hash, 'nz', -freed)
  end
  redis.call('PEXPIRE', log, LOG_TTL)
  redis.call('PUBLISH', topic, entry)
  return n
end

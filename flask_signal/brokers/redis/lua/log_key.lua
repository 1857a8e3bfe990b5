-- Shared by the scripts that publish on one swarm's topic (after log.lua); not run on its
-- own. The caller appends the swarm's log key to KEYS; it is taken off here, so the
-- script's own KEYS stay as its header says. publish(hash, topic, message) is
-- publish_to (log.lua) on that log.
local LOG = table.remove(KEYS)
local function publish(hash, topic, message)
  return publish_to(LOG, hash, topic, message)
end

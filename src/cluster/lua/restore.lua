
-- restore: ARGV = history, grace (ms), then sixes of membership id, token
-- key, room, person id, name, and how long (ms) its join timeout still runs
-- (0 unless the node answered its join and saw no stream of it since):
-- memberships a node knew when the log began again. Those not there yet are
-- put back (a person's first with a new_user) and start grace, or the rest
-- of their join timeout if that is longer (a client that joined a moment ago
-- may open its first stream a moment from now); one already put back by
-- another node keeps the later of the two deadlines. The nodes that stream
-- to them report it right after.
local now = now_ms()
local grace = tonumber(ARGV[2])
local added = 0
for i = 3, #ARGV, 6 do
  local left = tonumber(ARGV[i + 5])
  local deadline, why = now + grace, 'grace expired'
  if left > grace then
    deadline, why = now + left, 'join timeout'
  end
  if redis.call('HEXISTS', 'lobby:users', ARGV[i]) == 0 then
    add_user(ARGV[1], ARGV[i + 2], ARGV[i], ARGV[i + 3], ARGV[i + 1], ARGV[i + 4], '', deadline, why)
    added = added + 1
  else
    redis.call('ZADD', 'lobby:deadlines', 'XX', 'GT', deadline, ARGV[i])
  end
end
return added

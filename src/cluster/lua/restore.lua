
-- restore: ARGV = history, grace (ms), then fives of membership id, token
-- key, room, person id and name: memberships a node knew when the log began
-- again. Those not there yet are put back (a person's first with a
-- new_user) and start grace; the nodes that stream to them report it right
-- after.
local deadline = now_ms() + tonumber(ARGV[2])
local added = 0
for i = 3, #ARGV, 5 do
  if redis.call('HEXISTS', 'lobby:users', ARGV[i]) == 0 then
    add_user(ARGV[1], ARGV[i + 2], ARGV[i], ARGV[i + 3], ARGV[i + 1], ARGV[i + 4], '', deadline, 'grace expired')
    added = added + 1
  end
end
return added


-- restore: ARGV = history, grace (ms), then fours of user id, token key,
-- room and name: users a node knew to be online when the log began again.
-- Those not online yet are put back, each with a new_user, and start grace;
-- the nodes that stream to them report it right after.
local deadline = now_ms() + tonumber(ARGV[2])
local added = 0
for i = 3, #ARGV, 4 do
  if redis.call('HEXISTS', 'lobby:users', ARGV[i]) == 0 then
    add_user(ARGV[1], ARGV[i + 2], ARGV[i], ARGV[i + 1], ARGV[i + 3], deadline, 'grace expired')
    added = added + 1
  end
end
return added

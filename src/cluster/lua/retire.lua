
-- retire: ARGV = node, grace (ms). The node is stopping: whatever it still
-- holds starts grace (its clients reconnect elsewhere), and it is forgotten.
local node = ARGV[1]
local deadline = now_ms() + tonumber(ARGV[2])
for _, user in ipairs(redis.call('SMEMBERS', 'lobby:held:' .. node)) do
  release(node, user, deadline, 'grace expired')
end
redis.call('DEL', 'lobby:held:' .. node)
redis.call('ZREM', 'lobby:nodes', node)
return 1


-- retire: ARGV = node, grace (ms). The node is stopping: whatever it still
-- holds starts grace (its clients reconnect elsewhere), and it is forgotten.
local node = ARGV[1]
local deadline = now_ms() + tonumber(ARGV[2])
release_all(node, deadline, 'grace expired')
forget_node(node)
return 1


-- report: ARGV = node, grace (ms), then pairs of user id and stream id: the
-- streams that closed on the node. With no pairs it is a heartbeat. Returns 1
-- if the node was known, 0 if it must report everything it holds (see sync).
local node = ARGV[1]
local known = heartbeat(node)
local deadline = now_ms() + tonumber(ARGV[2])
for i = 3, #ARGV, 2 do
  release(node, ARGV[i], ARGV[i + 1], deadline, 'grace expired')
end
return known

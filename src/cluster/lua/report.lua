
-- report: ARGV = node, its node timeout (ms), grace (ms), then pairs of user
-- id and stream id: the streams that closed on the node. With no pairs it is
-- a heartbeat. Returns {1 if the node was known, 0 if it must report
-- everything it holds (see sync); Redis's clock (ms)}.
local node = ARGV[1]
local known = heartbeat(node, ARGV[2])
local deadline = now_ms() + tonumber(ARGV[3])
for i = 4, #ARGV, 2 do
  release(node, ARGV[i], ARGV[i + 1], deadline, 'grace expired')
end
return {known, now_ms()}

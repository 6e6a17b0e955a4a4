
-- report: ARGV = node, grace (ms), then pairs of 'o' (a user's first stream on
-- the node opened) or 'c' (their last one closed) and a user id, in the order
-- they happened. With no pairs it is a heartbeat. Returns 1 if the node was
-- known, 0 if it must report everything it holds (see sync).
local node = ARGV[1]
local known = heartbeat(node)
local deadline = now_ms() + tonumber(ARGV[2])
for i = 3, #ARGV, 2 do
  if ARGV[i] == 'o' then
    hold(node, ARGV[i + 1])
  else
    release(node, ARGV[i + 1], deadline, 'grace expired')
  end
end
return known

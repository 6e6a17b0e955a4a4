
-- sync: ARGV = node, its node timeout (ms), grace (ms), the node's next stream id, how many stream
-- ids follow that are being opened, those ids, then pairs of user id and
-- stream id: every stream open on the node now. Makes the node's streams
-- exactly those, among the ones numbered below the next id and not being
-- opened (the node cannot know yet about the others); a user left with no
-- stream anywhere starts grace.
local node = ARGV[1]
heartbeat(node, ARGV[2])
local deadline = now_ms() + tonumber(ARGV[3])
local next = tonumber(ARGV[4])
local opening = {}
local first = 6 + tonumber(ARGV[5])
for i = 6, first - 1 do
  opening[ARGV[i]] = true
end
local wanted = {}
for i = first, #ARGV, 2 do
  wanted[ARGV[i] .. ' ' .. ARGV[i + 1]] = {ARGV[i], ARGV[i + 1]}
end
for _, open in ipairs(redis.call('SMEMBERS', 'lobby:held:' .. node)) do
  local user, stream = string.match(open, '^(%S+) (%S+)$')
  if not wanted[open] and not opening[stream] and tonumber(stream) < next then
    release(node, user, stream, deadline, 'grace expired')
  end
end
for _, pair in pairs(wanted) do
  hold(node, pair[1], pair[2])
end
return 1


-- sync: ARGV = node, grace (ms), then pairs of user id and stream id: every
-- stream open on the node now. Makes the node's streams exactly those; a user
-- left with none anywhere starts grace.
local node = ARGV[1]
heartbeat(node)
local deadline = now_ms() + tonumber(ARGV[2])
local wanted = {}
for i = 3, #ARGV, 2 do
  wanted[ARGV[i] .. ' ' .. ARGV[i + 1]] = {ARGV[i], ARGV[i + 1]}
end
for _, open in ipairs(redis.call('SMEMBERS', 'lobby:held:' .. node)) do
  if not wanted[open] then
    local user, stream = string.match(open, '^(%S+) (%S+)$')
    release(node, user, stream, deadline, 'grace expired')
  end
end
for _, pair in pairs(wanted) do
  hold(node, pair[1], pair[2])
end
return 1

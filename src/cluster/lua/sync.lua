
-- sync: ARGV = node, grace (ms), then every user with a stream open on the
-- node now. Makes the node's holds exactly those: the others start grace.
local node = ARGV[1]
heartbeat(node)
local deadline = now_ms() + tonumber(ARGV[2])
local wanted = {}
for i = 3, #ARGV do
  wanted[ARGV[i]] = true
end
for _, user in ipairs(redis.call('SMEMBERS', 'lobby:held:' .. node)) do
  if not wanted[user] then
    release(node, user, deadline, 'grace expired')
  end
end
for user in pairs(wanted) do
  hold(node, user)
end
return 1

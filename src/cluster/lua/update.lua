
-- update: ARGV = history, membership id, token key, state (compact JSON), and the
-- time (ms, Redis's clock) after which the node no longer waits for the
-- answer. Sets its person's state and announces it with user_updated. Returns
-- {the log entry, its id}; the entry is 0 if the user is not online (or the
-- token is not theirs), -1 if the node gave up, -2 if the state is already
-- that (nothing is announced).
if now_ms() > tonumber(ARGV[5]) then
  return {-1, 0}
end
if other_log() then
  return {-3, 0}
end
local joined, token, room, person, name = user_of(ARGV[2])
if not joined or token ~= ARGV[3] then
  return {0, 0}
end
local key = room .. ' ' .. person
if redis.call('HGET', 'lobby:states', key) == ARGV[4] then
  return {-2, 0}
end
redis.call('HSET', 'lobby:states', key, ARGV[4])
local seq, id = publish(ARGV[1], room, {'k', 'user_updated', 'u', person, 'n', name, 's', joined, 'j', ARGV[4]})
return {seq, id}

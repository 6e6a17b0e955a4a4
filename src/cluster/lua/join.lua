
-- join: ARGV = history, max users, join timeout (ms), user id, token key,
-- name, and the time (ms, Redis's clock) after which the node no longer waits
-- for the answer. Returns {id of the new_user event, users online before}; the
-- id is 0 when the lobby is full, -1 when the node gave up: a join it answered
-- with an error must not happen later.
if now_ms() > tonumber(ARGV[7]) then
  return {-1, 0}
end
local online = redis.call('HLEN', 'lobby:users')
if online >= tonumber(ARGV[2]) then
  return {0, online}
end
local deadline = now_ms() + tonumber(ARGV[3])
return {add_user(ARGV[1], ARGV[4], ARGV[5], ARGV[6], deadline, 'join timeout'), online}

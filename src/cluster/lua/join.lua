
-- join: ARGV = history, max users in a room, join timeout (ms), user id,
-- token key, name, the time (ms, Redis's clock) after which the node no
-- longer waits for the answer, room, max rooms. Returns {the log entry of
-- the new_user, a count}: the entry is 0 when the room is full (the count is
-- its users), -2 when the join would make a room past max rooms (the count
-- is the rooms), -1 when the node gave up: a join it answered with an error
-- must not happen later.
if now_ms() > tonumber(ARGV[7]) then
  return {-1, 0}
end
local room = ARGV[8]
local online = tonumber(redis.call('HGET', 'lobby:rooms', room) or '0')
if online == 0 then
  local rooms = redis.call('HLEN', 'lobby:rooms')
  if rooms >= tonumber(ARGV[9]) then
    return {-2, rooms}
  end
end
if online >= tonumber(ARGV[2]) then
  return {0, online}
end
local deadline = now_ms() + tonumber(ARGV[3])
local seq = add_user(ARGV[1], room, ARGV[4], ARGV[5], ARGV[6], deadline, 'join timeout')
return {seq, online}

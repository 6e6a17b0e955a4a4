
-- join: ARGV = history, max users in a room, join timeout (ms), membership
-- id, token key, name, the time (ms, Redis's clock) after which the node no
-- longer waits for the answer, room, max rooms, person id ('' for a new
-- person under the membership's id), state ('' for none). Returns {the log
-- entry, a count, 1 if the person is new}: the entry is 0 when the room is
-- full (the count is its people), -2 when the join would make a room past
-- max rooms (the count is the rooms), -1 when the node gave up: a join it
-- answered with an error must not happen later. A person already in the
-- room always gets in.
if now_ms() > tonumber(ARGV[7]) then
  return {-1, 0, 0}
end
if other_log() then
  return {-3, 0, 0}
end
local room = ARGV[8]
local person = ARGV[10]
if person == '' then
  person = ARGV[4]
end
local online = tonumber(redis.call('HGET', 'lobby:rooms', room) or '0')
if redis.call('HEXISTS', 'lobby:people', room .. ' ' .. person) == 0 then
  if online == 0 then
    local rooms = redis.call('HLEN', 'lobby:rooms')
    if rooms >= tonumber(ARGV[9]) then
      return {-2, rooms, 0}
    end
  end
  if online >= tonumber(ARGV[2]) then
    return {0, online, 0}
  end
end
local deadline = now_ms() + tonumber(ARGV[3])
local seq, _, new = add_user(ARGV[1], room, ARGV[4], person, ARGV[5], ARGV[6], ARGV[11], deadline, 'join timeout')
return {seq, online, new}

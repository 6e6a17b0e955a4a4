-- Shared by every lobby script: each script is this text followed by its own.
-- A script runs whole, with nothing in between, so every rule below holds at
-- once for every node. The keys:
--   lobby:epoch        the log's identity; a new one means the log began again
--   lobby:seq          the number of the log's newest entry
--   lobby:log          the events of every room, a stream whose entry ids
--                      are <number>-0; each carries its room (w) and its id
--                      in that room (i), which is what streams see
--   lobby:last         room -> its newest event id (rooms with someone)
--   lobby:users        membership id -> "<id of its person's new_user> <token
--                      key> <room> <person id> <name>": one per join; the
--                      "user" of every key below is a membership
--   lobby:people       "<room> <person id>" -> "<id of their new_user> <how
--                      many memberships>": a person is listed once, however
--                      many joins (tabs, devices) they have
--   lobby:rooms        room -> how many people are in it (rooms with someone)
--   lobby:states       "<room> <person id>" -> their state, compact JSON (once set)
--   lobby:tokens       token key -> user id
--   lobby:deadlines    user id -> when they go offline (ms, Redis's clock);
--                      only users no node streams to have one
--   lobby:why          user id -> why that deadline: "join timeout",
--                      "grace expired" or "node lost"
--   lobby:nodes        node id -> its last heartbeat (ms)
--   lobby:timeouts     node id -> its --node-timeout (ms): how long it may be silent
--   lobby:born         when the log began (ms): until every node that may
--                      still put back users of an earlier log has had the
--                      time to, a token of an earlier log that this one does
--                      not hold may be only unknown *yet*
--   lobby:reaped       when a node last reaped (ms): a long gap means Redis,
--                      or every node, was away
--   lobby:graced      user id -> when their grace would end (ms), from a
--                      stream that closed while another was still counted
--   lobby:held:<node>  the streams open on that node: "<user id> <stream id>"
--   lobby:on:<user>    that user's open streams: "<node id> <stream id>"

-- KEYS[1], where a script takes it, is the epoch of the log the calling node
-- follows ('' before it has one). Such a script answers for the lobby only on
-- that log: on another (Redis lost its data and no node has begun the new
-- log yet, or one has and this node has not caught up) it changes nothing and
-- says so, and the node answers 503: never a 201 for a join that the new log
-- will not hold, never a 401 for a token it may hold in a moment.
local function other_log()
  return redis.call('GET', 'lobby:epoch') ~= KEYS[1]
end

local function now_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

-- Whether the log began less than `settling` ms ago (a node's node timeout
-- and grace: how long another node may be away and still come back with
-- users of an earlier log to put back).
local function began_lately(settling)
  local born = redis.call('GET', 'lobby:born')
  return born ~= false and now_ms() - tonumber(born) < tonumber(settling)
end

-- Appends an event of `room` to the log. Its entry is the log's next
-- number, so every node applies the events of every room in one order. Its
-- id in the room is one past the room's last; a room with no one in it
-- starts at the entry's own number, past every id already sent in any room
-- (an id is never above its entry's number). Returns both.
local function publish(history, room, fields)
  local seq = redis.call('INCR', 'lobby:seq')
  local id = seq
  if redis.call('HEXISTS', 'lobby:last', room) == 1 then
    id = redis.call('HINCRBY', 'lobby:last', room, 1)
  else
    redis.call('HSET', 'lobby:last', room, id)
  end
  redis.call('XADD', 'lobby:log', 'MAXLEN', '~', history, seq .. '-0', 'w', room, 'i', id, unpack(fields))
  return seq, id
end

-- Appends an entry that tells the nodes of a membership, with no event of
-- its room: its id is the room's last. Returns the entry's number.
local function note(history, room, fields)
  local seq = redis.call('INCR', 'lobby:seq')
  local id = redis.call('HGET', 'lobby:last', room) or seq
  redis.call('XADD', 'lobby:log', 'MAXLEN', '~', history, seq .. '-0', 'w', room, 'i', id, unpack(fields))
  return seq
end

-- A membership's id of its person's new_user, token key, room, person and
-- name; nil if it is not there.
local function user_of(user)
  local entry = redis.call('HGET', 'lobby:users', user)
  if not entry then
    return nil
  end
  return string.match(entry, '^(%d+) (%x+) (%S+) (%S+) (.*)$')
end

-- Adds the membership `user` of `person` in `room`. The person's first
-- announces them with new_user (with `state`, unless it is ''); a later one
-- is only noted. Returns the log entry's number, the new_user's id (0 for a
-- later membership), and 1 if the person is new.
local function add_user(history, room, user, person, token, name, state, deadline, why)
  local key = room .. ' ' .. person
  local found = redis.call('HGET', 'lobby:people', key)
  local seq, id, joined, new
  if found then
    local count
    joined, count = string.match(found, '^(%d+) (%d+)$')
    redis.call('HSET', 'lobby:people', key, joined .. ' ' .. (tonumber(count) + 1))
    seq = note(history, room, {'k', 'member_added', 'u', person, 'n', name, 'm', user, 't', token, 's', joined})
    id, new = 0, 0
  else
    local fields = {'k', 'new_user', 'u', person, 'n', name, 'm', user, 't', token}
    if state ~= '' then
      table.insert(fields, 'j')
      table.insert(fields, state)
      redis.call('HSET', 'lobby:states', key, state)
    end
    seq, id = publish(history, room, fields)
    joined, new = id, 1
    redis.call('HSET', 'lobby:people', key, id .. ' 1')
    redis.call('HINCRBY', 'lobby:rooms', room, 1)
  end
  redis.call('HSET', 'lobby:users', user, joined .. ' ' .. token .. ' ' .. room .. ' ' .. person .. ' ' .. name)
  redis.call('HSET', 'lobby:tokens', token, user)
  redis.call('ZADD', 'lobby:deadlines', deadline, user)
  redis.call('HSET', 'lobby:why', user, why)
  return seq, id, new
end

-- Ends the membership `user`. Its person's last takes them offline and
-- announces it; another is only noted (its streams end). Returns the log
-- entry's number, the disconnect_user's id (0 if the person stays) and 1 if
-- the person went; or 0 if the membership was not there.
local function remove_user(history, user, reason)
  local joined, token, room, person, name = user_of(user)
  if not joined then
    return 0
  end
  redis.call('HDEL', 'lobby:users', user)
  redis.call('HDEL', 'lobby:tokens', token)
  redis.call('ZREM', 'lobby:deadlines', user)
  redis.call('HDEL', 'lobby:why', user)
  for _, open in ipairs(redis.call('SMEMBERS', 'lobby:on:' .. user)) do
    local node, stream = string.match(open, '^(%S+) (%S+)$')
    redis.call('SREM', 'lobby:held:' .. node, user .. ' ' .. stream)
  end
  redis.call('DEL', 'lobby:on:' .. user)
  redis.call('HDEL', 'lobby:graced', user)
  local key = room .. ' ' .. person
  local count = tonumber(string.match(redis.call('HGET', 'lobby:people', key) or '', ' (%d+)$') or '1')
  if count > 1 then
    redis.call('HSET', 'lobby:people', key, joined .. ' ' .. (count - 1))
    local seq = note(history, room, {'k', 'member_left', 'u', person, 'n', name, 't', token, 's', joined})
    return seq, 0, 0
  end
  redis.call('HDEL', 'lobby:people', key)
  redis.call('HDEL', 'lobby:states', key)
  local seq, id = publish(history, room, {'k', 'disconnect_user', 'u', person, 'n', name, 's', joined, 'r', reason})
  if redis.call('HINCRBY', 'lobby:rooms', room, -1) <= 0 then
    redis.call('HDEL', 'lobby:rooms', room)
    redis.call('HDEL', 'lobby:last', room)
  end
  return seq, id, 1
end

-- A node opened a stream of the user: no deadline while one is open. Each
-- stream is named, so that telling twice changes nothing.
local function hold(node, user, stream)
  if redis.call('HEXISTS', 'lobby:users', user) == 0 then
    return
  end
  redis.call('SADD', 'lobby:held:' .. node, user .. ' ' .. stream)
  redis.call('SADD', 'lobby:on:' .. user, node .. ' ' .. stream)
  redis.call('ZREM', 'lobby:deadlines', user)
  redis.call('HDEL', 'lobby:why', user)
end

-- A node closed a stream of the user; once they have none anywhere, they go
-- offline at `deadline` unless one opens again.
local function release(node, user, stream, deadline, why)
  if redis.call('SREM', 'lobby:held:' .. node, user .. ' ' .. stream) == 0 then
    return
  end
  redis.call('SREM', 'lobby:on:' .. user, node .. ' ' .. stream)
  if redis.call('HEXISTS', 'lobby:users', user) == 0 then
    return
  end
  -- Grace runs from the latest of a user's streams to close: one closed on a
  -- live node while a stream on a node not yet taken for dead still counted
  -- gives grace from then, not from that node's last heartbeat.
  local graced = tonumber(redis.call('HGET', 'lobby:graced', user) or '0')
  if redis.call('SCARD', 'lobby:on:' .. user) > 0 then
    if deadline > graced then
      redis.call('HSET', 'lobby:graced', user, deadline)
    end
    return
  end
  redis.call('HDEL', 'lobby:graced', user)
  if redis.call('ZADD', 'lobby:deadlines', 'NX', math.max(deadline, graced), user) == 1 then
    redis.call('HSET', 'lobby:why', user, why)
  end
end

-- Releases every stream a node has open.
local function release_all(node, deadline, why)
  for _, open in ipairs(redis.call('SMEMBERS', 'lobby:held:' .. node)) do
    local user, stream = string.match(open, '^(%S+) (%S+)$')
    release(node, user, stream, deadline, why)
  end
end

-- Records that `node` is alive, and how long it may be silent; says whether
-- it was known (1) or had been taken for dead or never seen (0), in which case
-- it must report all it holds.
local function heartbeat(node, timeout)
  local known = redis.call('ZSCORE', 'lobby:nodes', node)
  redis.call('ZADD', 'lobby:nodes', now_ms(), node)
  redis.call('HSET', 'lobby:timeouts', node, timeout)
  if known then
    return 1
  end
  return 0
end

-- Forgets a node: it stopped, or was taken for dead.
local function forget_node(node)
  redis.call('DEL', 'lobby:held:' .. node)
  redis.call('ZREM', 'lobby:nodes', node)
  redis.call('HDEL', 'lobby:timeouts', node)
end

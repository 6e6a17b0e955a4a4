
-- reap: ARGV = history, node timeout (ms), grace (ms), look for lost nodes (1/0),
-- the time (ms, Redis's clock) after which the node no longer waits for the answer.
-- Nodes whose heartbeat is older than their own node timeout are taken for
-- dead: their users start grace from that heartbeat, when their streams
-- closed. But if no node has reaped for half the node timeout, Redis (or every
-- node) was away, and every heartbeat is old for that reason alone: then every
-- node gets a fresh period instead, and none is taken for dead, and every user
-- whose deadline fell meanwhile gets grace from now. Users whose
-- deadline has passed go offline, each exactly once: whichever node runs this
-- first removes them, and the others find nothing left to do.
-- Returns {lost node count, then for each person taken offline (their last
-- membership ended): person id, room, name, reason; and last the ms until the
-- next deadline, or -1}.
local now = now_ms()
-- A reap that reaches Redis after its node stopped waiting (Redis was
-- paused, or the node died meanwhile) does nothing: whoever reaps tells the
-- observers of each leave, and that node is no longer listening.
if now > tonumber(ARGV[5]) then
  return {0, -1}
end
local out = {0}
local last = tonumber(redis.call('GET', 'lobby:reaped') or now)
redis.call('SET', 'lobby:reaped', now)
local nodes = redis.call('ZRANGE', 'lobby:nodes', 0, -1, 'WITHSCORES')
if now - last > tonumber(ARGV[2]) / 2 then
  for i = 1, #nodes, 2 do
    redis.call('ZADD', 'lobby:nodes', now, nodes[i])
  end
  -- A deadline that fell while no one could reap moves to grace from now:
  -- a stream opened meanwhile on a node that could not reach Redis is
  -- reported first, as every node reports all its streams on its return.
  local grace = tonumber(ARGV[3])
  for _, user in ipairs(redis.call('ZRANGEBYSCORE', 'lobby:deadlines', '-inf', now)) do
    redis.call('ZADD', 'lobby:deadlines', now + grace, user)
  end
elseif ARGV[4] == '1' then
  for i = 1, #nodes, 2 do
    local node, seen = nodes[i], tonumber(nodes[i + 1])
    local timeout = tonumber(redis.call('HGET', 'lobby:timeouts', node) or ARGV[2])
    if now - seen > timeout then
      release_all(node, math.max(now, seen + tonumber(ARGV[3])), 'node lost')
      forget_node(node)
      out[1] = out[1] + 1
    end
  end
end
for _, user in ipairs(redis.call('ZRANGEBYSCORE', 'lobby:deadlines', '-inf', now, 'LIMIT', 0, 512)) do
  local reason = redis.call('HGET', 'lobby:why', user) or 'grace expired'
  local _, _, room, person, name = user_of(user)
  local seq, _, gone = remove_user(ARGV[1], user, reason)
  if seq > 0 and gone == 1 then
    table.insert(out, person)
    table.insert(out, room)
    table.insert(out, name)
    table.insert(out, reason)
  end
end
local next = redis.call('ZRANGE', 'lobby:deadlines', 0, 0, 'WITHSCORES')
if next[2] then
  table.insert(out, math.max(0, tonumber(next[2]) - now))
else
  table.insert(out, -1)
end
return out

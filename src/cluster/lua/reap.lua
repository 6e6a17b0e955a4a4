
-- reap: ARGV = history, node timeout (ms), grace (ms), look for lost nodes (1/0).
-- Nodes whose heartbeat is older than the timeout are taken for dead: their
-- users start grace from that heartbeat, when their streams closed. Users whose
-- deadline has passed go offline, each exactly once: whichever node runs this
-- first removes them, and the others find nothing left to do.
-- Returns {lost node count, then for each user taken offline: id, name,
-- reason; and last the ms until the next deadline, or -1}.
local now = now_ms()
local out = {0}
if ARGV[4] == '1' then
  local cutoff = now - tonumber(ARGV[2])
  for _, node in ipairs(redis.call('ZRANGEBYSCORE', 'lobby:nodes', '-inf', cutoff)) do
    local seen = tonumber(redis.call('ZSCORE', 'lobby:nodes', node))
    local deadline = math.max(now, seen + tonumber(ARGV[3]))
    release_all(node, deadline, 'node lost')
    redis.call('ZREM', 'lobby:nodes', node)
    out[1] = out[1] + 1
  end
end
for _, user in ipairs(redis.call('ZRANGEBYSCORE', 'lobby:deadlines', '-inf', now, 'LIMIT', 0, 512)) do
  local reason = redis.call('HGET', 'lobby:why', user) or 'grace expired'
  local _, _, name = user_of(user)
  if remove_user(ARGV[1], user, reason) > 0 then
    table.insert(out, user)
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

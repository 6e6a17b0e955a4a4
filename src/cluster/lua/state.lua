
-- state: ARGV = history. Everything a node needs to follow the log from now:
-- {epoch, the log's newest entry, each room's newest id as a flat list of
-- room and id, memberships as a flat list of id and entry, people's states
-- as a flat list of "<room> <person>" and state, the last entries newest
-- first}.
return {
  redis.call('GET', 'lobby:epoch') or '',
  tonumber(redis.call('GET', 'lobby:seq') or '0'),
  redis.call('HGETALL', 'lobby:last'),
  redis.call('HGETALL', 'lobby:users'),
  redis.call('HGETALL', 'lobby:states'),
  redis.call('XREVRANGE', 'lobby:log', '+', '-', 'COUNT', ARGV[1]),
}

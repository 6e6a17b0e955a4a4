
-- state: ARGV = history. Everything a node needs to follow the log from now:
-- {epoch, newest event id, users as a flat list of id and entry, the last
-- events newest first}.
return {
  redis.call('GET', 'lobby:epoch') or '',
  tonumber(redis.call('GET', 'lobby:seq') or '0'),
  redis.call('HGETALL', 'lobby:users'),
  redis.call('XREVRANGE', 'lobby:log', '+', '-', 'COUNT', ARGV[1]),
}

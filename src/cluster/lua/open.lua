
-- open: ARGV = node, token key, stream id, most streams a user may have
-- open, how long (ms) a new log settles, 1 if the token was given out by
-- another log (else 0). Returns {outcome, newest event id, user id}: outcome
-- 1 if the stream is counted, 0 if the token is unknown, -1 if its user has
-- too many streams, -3 if Redis holds another log than the node follows, -4
-- if the token is another log's, unknown to this one while it settles (a
-- node away may yet put its user back).
if other_log() then
  return {-3, 0, ''}
end
local user = redis.call('HGET', 'lobby:tokens', ARGV[2])
local seq = tonumber(redis.call('GET', 'lobby:seq') or '0')
if not user then
  if ARGV[6] == '1' and began_lately(ARGV[5]) then
    return {-4, seq, ''}
  end
  return {0, seq, ''}
end
if redis.call('SCARD', 'lobby:on:' .. user) >= tonumber(ARGV[4]) then
  return {-1, seq, user}
end
-- The node is alive now: a node that was silent (paused) and is about to be
-- taken for dead would otherwise lose this stream's user at the next reap.
-- (A node already taken for dead stays so until it reports all it holds.)
redis.call('ZADD', 'lobby:nodes', 'XX', now_ms(), ARGV[1])
hold(ARGV[1], user, ARGV[3])
return {1, seq, user}


-- epoch: ARGV = a new epoch id, the newest log entry this node has applied.
-- Returns the epoch of the log as it now is. A log that is missing (Redis
-- lost its data) or older than what this node saw (Redis came back from an
-- old snapshot) is started again under the new epoch, numbered past any
-- entry this node applied and past the clock, so that no client's old
-- Last-Event-ID can be taken for an id of the new log.
local epoch = redis.call('GET', 'lobby:epoch')
local seq = tonumber(redis.call('GET', 'lobby:seq') or '0')
local mine = tonumber(ARGV[2])
if epoch and seq >= mine then
  return epoch
end
for _, key in ipairs(redis.call('KEYS', 'lobby:*')) do
  redis.call('DEL', key)
end
-- A new log begins at Redis's clock in tenths of a millisecond (or past every
-- id this node saw, if that is further): ids of a log stay behind the clock
-- while it gives out fewer than ten a millisecond on average, so a log begun
-- later begins past every id an earlier one gave out, whoever begins it: a
-- node that saw nothing (it started while Redis was away) or two nodes that
-- saw the same (each beginning a log after Redis lost its data twice). No
-- margin past what this node saw: a jump ahead of the clock would give two
-- nodes that saw the same the same ids. (Tenths, not microseconds: Lua writes
-- a number into a string with 14 digits, and publish writes each entry's
-- number into its stream id.)
local time = redis.call('TIME')
local clock = tonumber(time[1]) * 10000 + math.floor(tonumber(time[2]) / 100)
seq = math.max(seq, mine, clock) + 1
redis.call('SET', 'lobby:seq', seq)
redis.call('SET', 'lobby:epoch', ARGV[1])
-- Whether an earlier log was lost cannot always be told here (a node that
-- started after Redis lost its data saw none): every new log settles, and
-- the tokens of other logs tell whether there was one.
redis.call('SET', 'lobby:born', now_ms())
return ARGV[1]

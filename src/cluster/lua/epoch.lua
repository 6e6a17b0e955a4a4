
-- epoch: ARGV = a new epoch id, the newest log entry this node has applied.
-- Returns the epoch of the log as it now is. A log that is missing (Redis
-- lost its data) or older than what this node saw (Redis came back from an
-- old snapshot) is started again under the new epoch, numbered a million
-- past any entry this node applied (and so past any id it sent, in any room),
-- so that no client's old Last-Event-ID can be taken for an id of the new log.
local epoch = redis.call('GET', 'lobby:epoch')
local seq = tonumber(redis.call('GET', 'lobby:seq') or '0')
local mine = tonumber(ARGV[2])
if epoch and seq >= mine then
  return epoch
end
for _, key in ipairs(redis.call('KEYS', 'lobby:*')) do
  redis.call('DEL', key)
end
if mine > 0 then
  seq = math.max(seq, mine) + 1000000
end
redis.call('SET', 'lobby:seq', seq)
redis.call('SET', 'lobby:epoch', ARGV[1])
return ARGV[1]

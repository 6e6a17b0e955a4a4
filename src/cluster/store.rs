//! What the cluster keeps in Redis, and the only code that talks to it. Every
//! change is one Lua script (in `lua/`), so each rule holds atomically for all
//! nodes; this file calls them and reads their answers into presence's types.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::{StreamId, StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::{AsyncConnectionConfig, AsyncTypedCommands, Client, RedisResult, Script, Value};

use crate::presence::{
    Change, Entry, EventId, Known, LeaveReason, Name, Online, Reload, RoomName, StreamKey, Token,
    TokenKey, UserId, UserState,
};

/// The stream that holds the log.
const LOG: &str = "lobby:log";

/// How long a command may take before Redis counts as unreachable.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How much longer than its block time a read of the log may take.
pub(super) const RESPONSE_SLACK: Duration = RESPONSE_TIMEOUT;

macro_rules! script {
    ($file:literal) => {
        Script::new(concat!(
            include_str!("lua/prelude.lua"),
            include_str!($file)
        ))
    };
}

struct Scripts {
    join: Script,
    open: Script,
    leave: Script,
    report: Script,
    sync: Script,
    retire: Script,
    reap: Script,
    epoch: Script,
    state: Script,
    restore: Script,
    update: Script,
}

/// A handle to the shared store. Cheap to clone; commands share one
/// connection, which reconnects by itself.
#[derive(Clone)]
pub(super) struct Store {
    client: Client,
    commands: ConnectionManager,
    scripts: Arc<Scripts>,
    /// How many events the log keeps (MAXLEN ~).
    history: usize,
    /// Redis's clock less this machine's, in ms, as last measured.
    clock: Arc<AtomicI64>,
    /// The epoch of the log this node follows ('' before it has one), which
    /// the scripts that answer clients check. A std mutex: set and cloned,
    /// never held across an await.
    epoch: Arc<Mutex<String>>,
    /// Woken when Redis answers from another log than that one, which the
    /// follower then catches up with: Redis may have lost its data without
    /// dropping a connection (a FLUSHALL, a fail-over behind a proxy).
    elsewhere: Arc<Notify>,
}

/// What a join may not go past.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub max_users: usize,
    pub max_rooms: usize,
    pub join_timeout: Duration,
}

/// Who joins, where.
pub(super) struct Member<'a> {
    pub room: &'a RoomName,
    /// The membership's id (one per join).
    pub user: UserId,
    /// The person's, if a signed join names one; else the membership's.
    pub person: Option<&'a UserId>,
    pub token: TokenKey,
    pub name: &'a Name,
    pub state: Option<&'a UserState>,
}

/// What `update` found.
pub(super) enum Updating {
    /// Announced: the log entry and the event's id.
    Updated(u64, EventId),
    /// It was their state already: nothing announced.
    Same,
    /// The user is not online, or the token is not theirs.
    Unknown,
}

/// What `join` found.
pub(super) enum Joining {
    /// In: the log entry, and whether the person is new (their `new_user`).
    Joined { seq: u64, new: bool },
    /// The room has this many users, its most.
    Full(usize),
    /// There are this many rooms, the most.
    TooManyRooms(usize),
}

/// What `open` found.
pub(super) enum Opening {
    Opened(UserId),
    Unknown,
    TooMany,
    /// Redis holds another log than the one this node follows: it cannot say.
    OtherLog,
    /// The token, given out by another log, is unknown to one that began
    /// moments ago: a node that is away may yet put its user back.
    Unsettled,
}

/// What a reap did.
pub(super) struct Reaped {
    pub lost_nodes: u64,
    /// Each user taken offline: id, room, name and why.
    pub gone: Vec<(UserId, RoomName, Name, LeaveReason)>,
    /// How long until the next deadline, if there is one.
    pub next: Option<Duration>,
}

impl Store {
    pub(super) fn new(url: &str, history: usize) -> RedisResult<Store> {
        let client = Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let commands = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        let scripts = Scripts {
            join: script!("lua/join.lua"),
            open: script!("lua/open.lua"),
            leave: script!("lua/leave.lua"),
            report: script!("lua/report.lua"),
            sync: script!("lua/sync.lua"),
            retire: script!("lua/retire.lua"),
            reap: script!("lua/reap.lua"),
            epoch: script!("lua/epoch.lua"),
            state: script!("lua/state.lua"),
            restore: script!("lua/restore.lua"),
            update: script!("lua/update.lua"),
        };
        Ok(Store {
            client,
            commands,
            scripts: Arc::new(scripts),
            history,
            clock: Arc::new(AtomicI64::new(0)),
            epoch: Arc::default(),
            elsewhere: Arc::default(),
        })
    }

    /// A connection of its own for reading the log, whose reads block: it has
    /// no response timeout of its own (the reader puts one around each read).
    pub(super) async fn reader(&self) -> RedisResult<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_response_timeout(None);
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    pub(super) async fn join(&self, limits: Limits, joining: Member<'_>) -> RedisResult<Joining> {
        let (seq, count, new): (i64, usize, u8) = self
            .scripts
            .join
            .key(self.epoch_followed())
            .arg(self.history)
            .arg(limits.max_users)
            .arg(millis(limits.join_timeout))
            .arg(joining.user.to_string())
            .arg(joining.token.to_hex())
            .arg(joining.name.as_str())
            .arg(self.give_up_at())
            .arg(joining.room.as_str())
            .arg(limits.max_rooms)
            .arg(joining.person.map(UserId::to_string).unwrap_or_default())
            .arg(joining.state.map_or("", UserState::as_json))
            .invoke_async(&mut self.commands.clone())
            .await?;
        match seq {
            0 => Ok(Joining::Full(count)),
            -2 => Ok(Joining::TooManyRooms(count)),
            1.. => Ok(Joining::Joined {
                seq: u64::try_from(seq).unwrap_or(0),
                new: new == 1,
            }),
            -3 => Err(self.other_log()),
            _ => Err(too_late()),
        }
    }

    /// Ends the membership `user`: the log entry, and the `disconnect_user`'s
    /// id if its person went with it; `None` if it was not there.
    pub(super) async fn leave(
        &self,
        user: &UserId,
        token: TokenKey,
    ) -> RedisResult<Option<(u64, Option<EventId>)>> {
        let (seq, id, gone): (i64, EventId, u8) = self
            .scripts
            .leave
            .key(self.epoch_followed())
            .arg(self.history)
            .arg(user.to_string())
            .arg(token.to_hex())
            .arg(self.give_up_at())
            .invoke_async(&mut self.commands.clone())
            .await?;
        match seq {
            0 => Ok(None),
            1.. => Ok(u64::try_from(seq)
                .ok()
                .map(|seq| (seq, (gone == 1).then_some(id)))),
            -3 => Err(self.other_log()),
            _ => Err(too_late()),
        }
    }

    /// Sets the state of `user` (whose token's key is `token`) and
    /// announces it: the log entry of the `user_updated` and its id, `None`
    /// if the user was not online, [`Updating::Same`] if it was their state.
    pub(super) async fn update(
        &self,
        user: &UserId,
        token: TokenKey,
        state: &UserState,
    ) -> RedisResult<Updating> {
        let (seq, id): (i64, EventId) = self
            .scripts
            .update
            .key(self.epoch_followed())
            .arg(self.history)
            .arg(user.to_string())
            .arg(token.to_hex())
            .arg(state.as_json())
            .arg(self.give_up_at())
            .invoke_async(&mut self.commands.clone())
            .await?;
        match seq {
            0 => Ok(Updating::Unknown),
            -2 => Ok(Updating::Same),
            1.. => Ok(Updating::Updated(u64::try_from(seq).unwrap_or(0), id)),
            -3 => Err(self.other_log()),
            _ => Err(too_late()),
        }
    }

    /// When (ms, on Redis's clock) a change this node asks for must have been
    /// made, or not at all: well before the node stops waiting for the answer,
    /// so that a join or leave answered with an error never happens later.
    fn give_up_at(&self) -> i64 {
        let give_up = i64::try_from(millis(RESPONSE_TIMEOUT / 2)).unwrap_or(i64::MAX);
        self.redis_now() + give_up
    }

    /// Now on Redis's clock (ms), as last measured against this machine's.
    fn redis_now(&self) -> i64 {
        unix_millis() + self.clock.load(Ordering::Relaxed)
    }

    /// Counts a new stream `stream` on `node` for the holder of `token`,
    /// unless they have `max` open across the cluster. Also returns the newest
    /// log entry, which the node must have applied before it serves the stream.
    pub(super) async fn open(
        &self,
        node: &str,
        token: TokenKey,
        stream: u64,
        max: u8,
        settling: Duration,
        of_another_log: bool,
    ) -> RedisResult<(Opening, u64)> {
        let (outcome, seq, user): (i8, u64, String) = self
            .scripts
            .open
            .key(self.epoch_followed())
            .arg(node)
            .arg(token.to_hex())
            .arg(stream)
            .arg(max)
            .arg(millis(settling))
            .arg(u8::from(of_another_log))
            .invoke_async(&mut self.commands.clone())
            .await?;
        let opening = match outcome {
            1 => Opening::Opened(UserId::read(&user).map_err(|_| malformed("lobby:tokens"))?),
            0 => Opening::Unknown,
            -3 => {
                self.elsewhere.notify_one();
                Opening::OtherLog
            }
            -4 => Opening::Unsettled,
            _ => Opening::TooMany,
        };
        Ok((opening, seq))
    }

    /// Reports streams closed on `node` (none: a heartbeat). Says whether the
    /// node was known; if not, it must [`sync`](Self::sync).
    pub(super) async fn report(
        &self,
        node: &str,
        node_timeout: Duration,
        grace: Duration,
        closed: &[StreamKey],
    ) -> RedisResult<bool> {
        let mut call = self.scripts.report.arg(node);
        call.arg(millis(node_timeout)).arg(millis(grace));
        for key in closed {
            call.arg(key.user.to_string()).arg(key.stream);
        }
        let asked = unix_millis();
        let (known, redis_now): (u8, i64) = call.invoke_async(&mut self.commands.clone()).await?;
        // Redis's clock against ours, at the middle of the round trip.
        let here = asked + (unix_millis() - asked) / 2;
        self.clock.store(redis_now - here, Ordering::Relaxed);
        Ok(known == 1)
    }

    /// Makes `node`'s open streams exactly `open`, among those numbered
    /// below `next` and not `in_flight` (the others are not known yet).
    pub(super) async fn sync(
        &self,
        node: &str,
        node_timeout: Duration,
        grace: Duration,
        next: u64,
        in_flight: &[u64],
        open: &[StreamKey],
    ) -> RedisResult<()> {
        let mut call = self.scripts.sync.arg(node);
        call.arg(millis(node_timeout))
            .arg(millis(grace))
            .arg(next)
            .arg(in_flight.len());
        for stream in in_flight {
            call.arg(*stream);
        }
        for key in open {
            call.arg(key.user.to_string()).arg(key.stream);
        }
        call.invoke_async::<()>(&mut self.commands.clone()).await
    }

    /// The node is stopping: its users start grace and it is forgotten.
    pub(super) async fn retire(&self, node: &str, grace: Duration) -> RedisResult<()> {
        self.scripts
            .retire
            .arg(node)
            .arg(millis(grace))
            .invoke_async::<()>(&mut self.commands.clone())
            .await
    }

    pub(super) async fn reap(
        &self,
        node_timeout: Duration,
        grace: Duration,
        look_for_lost_nodes: bool,
    ) -> RedisResult<Reaped> {
        let values: Vec<Value> = self
            .scripts
            .reap
            .arg(self.history)
            .arg(millis(node_timeout))
            .arg(millis(grace))
            .arg(u8::from(look_for_lost_nodes))
            .arg(self.give_up_at())
            .invoke_async(&mut self.commands.clone())
            .await?;
        let number = |value: &Value| redis::from_redis_value_ref::<i64>(value).unwrap_or(-1);
        let (Some(first), Some(last)) = (values.first(), values.last()) else {
            return Err(malformed("reap"));
        };
        let gone = values[1..values.len() - 1]
            .chunks(4)
            .filter_map(|four| {
                let gone = parse_gone(four);
                if gone.is_none() {
                    // The user is gone from Redis all the same; only the
                    // metrics and the webhook miss this one leave.
                    tracing::warn!(?four, "a user left, for a reason lobby cannot read");
                }
                gone
            })
            .collect();
        Ok(Reaped {
            lost_nodes: u64::try_from(number(first)).unwrap_or(0),
            gone,
            next: u64::try_from(number(last)).ok().map(Duration::from_millis),
        })
    }

    /// The epoch of the log this node follows, for the scripts to check.
    pub(super) fn follow_epoch(&self, epoch: &str) {
        *self.epoch.lock().unwrap_or_else(|p| p.into_inner()) = epoch.to_owned();
    }

    fn epoch_followed(&self) -> String {
        self.epoch.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A new token of a user of `room`, tagged with the log this node follows.
    pub(super) fn new_token(&self, room: &RoomName) -> Token {
        Token::random_in_log(room, &self.epoch_followed())
    }

    /// Whether `token` is of the form lobby gives out, tagged with another log
    /// than this node follows: a log that began again may not hold it *yet*.
    pub(super) fn of_another_log(&self, token: &Token) -> bool {
        token
            .log_tag()
            .is_some_and(|tag| !self.epoch_followed().starts_with(tag))
    }

    /// The number of the newest entry of the log this node follows, and
    /// whether that log is still settling (began less than `settling` ago);
    /// `None` if Redis holds another log.
    pub(super) async fn latest_followed(
        &self,
        settling: Duration,
    ) -> RedisResult<Option<(u64, bool)>> {
        let (epoch, seq, born): (Option<String>, Option<u64>, Option<i64>) = redis::cmd("MGET")
            .arg("lobby:epoch")
            .arg("lobby:seq")
            .arg("lobby:born")
            .query_async(&mut self.commands.clone())
            .await?;
        if !follows(epoch.as_deref(), &self.epoch_followed()) {
            self.elsewhere.notify_one();
            return Ok(None);
        }
        let settling = i64::try_from(millis(settling)).unwrap_or(i64::MAX);
        let settling = born.is_some_and(|born| self.redis_now() - born < settling);
        Ok(Some((seq.unwrap_or(0), settling)))
    }

    /// Returns once Redis has answered from another log than the one this
    /// node follows: it lost its data, or another node began a new log.
    pub(super) async fn another_log_seen(&self) {
        self.elsewhere.notified().await;
    }

    /// Redis holds another log than the one this node follows (it lost its
    /// data, and the new log is not begun or not caught up with yet): nothing
    /// was changed. The follower is told to catch up.
    fn other_log(&self) -> redis::RedisError {
        self.elsewhere.notify_one();
        redis::RedisError::from((
            redis::ErrorKind::Io,
            "Redis holds another log than this node follows",
        ))
    }

    /// The number of the log's newest entry.
    pub(super) async fn latest(&self) -> RedisResult<u64> {
        let seq: Option<u64> = self
            .commands
            .clone()
            .get("lobby:seq")
            .await?
            .map_or(Ok(None), |text| {
                text.parse().map(Some).map_err(|_| malformed("lobby:seq"))
            })?;
        Ok(seq.unwrap_or(0))
    }

    /// The number of the oldest entry the log still holds.
    pub(super) async fn oldest(&self) -> RedisResult<Option<u64>> {
        let first: StreamRangeReply = redis::cmd("XRANGE")
            .arg(LOG)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.commands.clone())
            .await?;
        Ok(first
            .ids
            .first()
            .and_then(|entry| entry.id.strip_suffix("-0")?.parse().ok()))
    }

    /// The epoch of the log, which is begun again (under `fresh`) if Redis
    /// lost it or holds an older one than the node has seen (`latest`).
    pub(super) async fn epoch(&self, fresh: &str, latest: u64) -> RedisResult<String> {
        self.scripts
            .epoch
            .arg(fresh)
            .arg(latest)
            .invoke_async(&mut self.commands.clone())
            .await
    }

    /// Puts back users the log lost; returns how many were missing. Each
    /// gets grace, or, if this node answered its join and saw no stream of
    /// it since, what is left of its join timeout if that is longer (the
    /// other nodes cannot tell whether a stream opened anywhere).
    pub(super) async fn restore(
        &self,
        grace: Duration,
        join_timeout: Duration,
        users: &[Known],
    ) -> RedisResult<usize> {
        let mut call = self.scripts.restore.arg(self.history);
        call.arg(millis(grace));
        for known in users {
            let left = known.joined_here.map_or(Duration::ZERO, |joined| {
                join_timeout.saturating_sub(joined.elapsed())
            });
            call.arg(known.member.to_string())
                .arg(known.token.to_hex())
                .arg(known.room.as_str())
                .arg(known.user.to_string())
                .arg(known.name.as_str())
                .arg(millis(left));
        }
        call.invoke_async(&mut self.commands.clone()).await
    }

    /// The epoch, and everything a replica needs to follow the log from now.
    pub(super) async fn state(&self) -> RedisResult<(String, Reload)> {
        type Pairs = Vec<(String, String)>;
        type Entries = StreamRangeReply;
        let (epoch, latest, rooms, users, states, entries): (
            String,
            u64,
            Pairs,
            Pairs,
            Pairs,
            Entries,
        ) = self
            .scripts
            .state
            .arg(self.history)
            .invoke_async(&mut self.commands.clone())
            .await?;
        let rooms = rooms
            .iter()
            .map(|(room, id)| {
                let room = RoomName::parse(room).ok();
                room.zip(id.parse().ok())
                    .ok_or_else(|| malformed("lobby:last"))
            })
            .collect::<RedisResult<_>>()?;
        let states: HashMap<&str, UserState> = states
            .iter()
            .map(|(user, state)| {
                let state = UserState::parse(state.as_bytes());
                Ok((user.as_str(), state.map_err(|_| malformed("lobby:states"))?))
            })
            .collect::<RedisResult<_>>()?;
        let users = users
            .iter()
            .map(|(member, entry)| {
                parse_user(member, entry, &states).ok_or_else(|| malformed("lobby:users"))
            })
            .collect::<RedisResult<_>>()?;
        let mut history = entries
            .ids
            .iter()
            .map(|entry| parse_entry(entry).ok_or_else(|| malformed(LOG)))
            .collect::<RedisResult<Vec<Entry>>>()?;
        history.reverse();
        Ok((
            epoch,
            Reload {
                latest,
                rooms,
                users,
                history,
            },
        ))
    }
}

/// Waits up to `block` for entries after `after`; returns them in order.
pub(super) async fn read_log(
    connection: &mut MultiplexedConnection,
    after: u64,
    block: Duration,
) -> RedisResult<Vec<Entry>> {
    let options = StreamReadOptions::default()
        .block(usize::try_from(block.as_millis()).unwrap_or(usize::MAX))
        .count(1024);
    let reply: Option<StreamReadReply> = redis::cmd("XREAD")
        .arg(&options)
        .arg("STREAMS")
        .arg(LOG)
        .arg(format!("{after}-0"))
        .query_async(connection)
        .await?;
    reply
        .into_iter()
        .flat_map(|reply| reply.keys)
        .flat_map(|key| key.ids)
        .map(|entry| parse_entry(&entry).ok_or_else(|| malformed(LOG)))
        .collect()
}

/// `<id of new_user> <token key> <room> <person id> <name>`, as lobby:users
/// holds each membership; the person's state from `states`.
fn parse_user(member: &str, entry: &str, states: &HashMap<&str, UserState>) -> Option<Online> {
    let mut parts = entry.splitn(5, ' ');
    let joined = parts.next()?.parse().ok()?;
    let token = TokenKey::from_hex(parts.next()?)?;
    let room = RoomName::parse(parts.next()?).ok()?;
    let person = parts.next()?;
    let name = Name::parse(parts.next()?).ok()?;
    let state = states.get(format!("{room} {person}").as_str()).cloned();
    Some(Online {
        joined,
        room,
        member: UserId::read(member).ok()?,
        user: UserId::read(person).ok()?,
        name,
        token,
        state,
    })
}

/// `<user id>, <room>, <name>, <reason>`, as the reap script lists each user
/// it took offline.
fn parse_gone(four: &[Value]) -> Option<(UserId, RoomName, Name, LeaveReason)> {
    let text = |i: usize| redis::from_redis_value_ref::<String>(four.get(i)?).ok();
    let user = UserId::read(&text(0)?).ok()?;
    let room = RoomName::parse(&text(1)?).ok()?;
    let name = Name::parse(&text(2)?).ok()?;
    Some((user, room, name, leave_reason(&text(3)?)?))
}

/// A leave reason as the Lua scripts write it ("grace expired", …).
fn leave_reason(text: &str) -> Option<LeaveReason> {
    LeaveReason::ALL
        .into_iter()
        .find(|reason| reason.as_str().replace('_', " ") == text)
}

/// A log entry: id `<number>-0`; fields `w` (room), `i` (id in the room),
/// `k` (kind), `u` (the person), `n` (name), `m` (the membership, for a join
/// or a membership added), `t` (token key) for a join or a membership, `s`
/// (id of the person's new_user) for all but a join, and `j` (the state) for
/// an update, or a join that came with one.
fn parse_entry(entry: &StreamId) -> Option<Entry> {
    let seq = entry.id.strip_suffix("-0")?.parse().ok()?;
    let field = |name: &str| entry.get::<String>(name);
    let room = RoomName::parse(&field("w")?).ok()?;
    let id = field("i")?.parse().ok()?;
    let user = UserId::read(&field("u")?).ok()?;
    let name = Name::parse(&field("n")?).ok()?;
    let change = match field("k")?.as_str() {
        "new_user" => Change::Joined {
            member: field("m").map_or(Some(user.clone()), |m| UserId::read(&m).ok())?,
            user,
            name,
            token: TokenKey::from_hex(&field("t")?)?,
            state: match field("j") {
                Some(state) => Some(UserState::parse(state.as_bytes()).ok()?),
                None => None,
            },
        },
        "member_added" => Change::MemberAdded {
            member: UserId::read(&field("m")?).ok()?,
            token: TokenKey::from_hex(&field("t")?)?,
            joined: field("s")?.parse().ok()?,
        },
        "member_left" => Change::MemberLeft {
            token: TokenKey::from_hex(&field("t")?)?,
            joined: field("s")?.parse().ok()?,
        },
        "disconnect_user" => Change::Left {
            user,
            name,
            joined: field("s")?.parse().ok()?,
        },
        "user_updated" => Change::Updated {
            user,
            name,
            joined: field("s")?.parse().ok()?,
            state: UserState::parse(field("j")?.as_bytes()).ok()?,
        },
        _ => return None,
    };
    Some(Entry {
        seq,
        id,
        room,
        change,
    })
}

/// This machine's clock, in ms since 1970.
/// Whether Redis holds the log a node follows: never while the node follows
/// none yet (it has not caught up since it started), nor while Redis holds
/// none (it lost its data), even though the two then look alike.
fn follows(in_redis: Option<&str>, followed: &str) -> bool {
    !followed.is_empty() && in_redis == Some(followed)
}

fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}

/// A change Redis got too late to make: the node had stopped waiting.
fn too_late() -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Io,
        "Redis answered after this node stopped waiting",
    ))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn malformed(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Parse,
        "lobby found something it did not write",
        what.to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_that_follows_no_log_yet_is_not_in_step_with_an_empty_redis() {
        assert!(!follows(None, ""), "a node just started, Redis empty");
        assert!(!follows(Some(""), ""));
        assert!(!follows(None, "a1b2"), "Redis lost its data");
        assert!(!follows(Some("c3d4"), "a1b2"), "another log");
        assert!(follows(Some("a1b2"), "a1b2"));
    }

    #[test]
    fn every_reason_the_cluster_scripts_write_is_understood() {
        for (text, reason) in [
            ("grace expired", LeaveReason::GraceExpired),
            ("join timeout", LeaveReason::JoinTimeout),
            ("node lost", LeaveReason::NodeLost),
        ] {
            assert_eq!(leave_reason(text), Some(reason));
        }
        assert_eq!(leave_reason("bored"), None);
    }
}

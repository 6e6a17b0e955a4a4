//! A property test of people and their memberships (signed joins): random
//! runs of joins by a few people who share their `sub` across tabs, leaves,
//! streams opened and dropped, state updates and time passing. After every
//! step, the people online are what a plain model of the rules says (a
//! membership ends at its leave, its join timeout, or grace after its last
//! stream; a person is online while any of theirs is), and every open
//! stream's view, built from its snapshot and the events it read, equals the
//! users list (one entry a person, with their state). Runs on tokio's paused
//! clock.

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::frames::{Frame, parse_frames};
use super::*;

const GRACE: Duration = Duration::from_secs(5);
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// A few people, so that their tabs overlap.
const PEOPLE: usize = 3;
const STATES: [&str; 2] = [r#"{"status":"away"}"#, r#"{"typing":true}"#];

#[derive(Debug, Clone)]
enum Op {
    /// Person `n` joins from one more tab.
    Join(usize),
    /// A membership leaves.
    Leave(Index),
    /// A membership opens a stream.
    Open(Index),
    /// A stream drops.
    Drop(Index),
    /// A membership says what its person is doing.
    Say(Index, usize),
    Advance(Duration),
}

fn op() -> impl Strategy<Value = Op> {
    let wait = prop_oneof![
        Just(Duration::from_secs(1)),
        Just(GRACE + Duration::from_millis(1)),
        Just(JOIN_TIMEOUT + Duration::from_millis(1)),
    ];
    prop_oneof![
        4 => (0..PEOPLE).prop_map(Op::Join),
        2 => any::<Index>().prop_map(Op::Leave),
        4 => any::<Index>().prop_map(Op::Open),
        3 => any::<Index>().prop_map(Op::Drop),
        3 => (any::<Index>(), 0..STATES.len()).prop_map(|(who, state)| Op::Say(who, state)),
        2 => wait.prop_map(Op::Advance),
    ]
}

/// One join, as the model keeps it.
struct Membership {
    person: usize,
    token: Token,
    online: bool,
    streams: usize,
    /// While online with no stream: when it ends.
    deadline: Option<Instant>,
}

/// An open stream and the view its client built.
struct Client {
    member: usize,
    subscription: Subscription,
    view: Vec<Value>,
}

struct Run {
    presence: Presence,
    members: Vec<Membership>,
    /// People online, in the order they came, with their state.
    online: Vec<(usize, Option<Value>)>,
    clients: Vec<Client>,
}

fn sub(person: usize) -> UserId {
    UserId::parse(&format!("person-{person}")).expect("a valid id")
}

impl Run {
    fn new() -> Run {
        Run {
            presence: Presence::new(PresenceConfig {
                grace: GRACE,
                join_timeout: JOIN_TIMEOUT,
                ..PresenceConfig::default()
            }),
            members: Vec::new(),
            online: Vec::new(),
            clients: Vec::new(),
        }
    }

    fn pick(&self, index: Index) -> Option<usize> {
        (!self.members.is_empty()).then(|| index.index(self.members.len()))
    }

    /// The users list the model expects.
    fn expected(&self) -> Vec<Value> {
        self.online
            .iter()
            .map(|(person, state)| {
                let mut user =
                    json!({"id": sub(*person).to_string(), "name": format!("P{person}")});
                if let Some(state) = state {
                    user["state"] = state.clone();
                }
                user
            })
            .collect()
    }

    /// A membership ended: its person goes if it was their last.
    fn end(&mut self, member: usize) {
        let membership = &mut self.members[member];
        membership.online = false;
        membership.deadline = None;
        let person = membership.person;
        if !self.members.iter().any(|m| m.person == person && m.online) {
            self.online.retain(|(p, _)| *p != person);
        }
    }

    async fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Join(person) => {
                let name = Name::parse(&format!("P{person}")).expect("a name");
                let joined = self
                    .presence
                    .join_as(Some(sub(person)), name, None)
                    .map_err(|err| TestCaseError::fail(format!("{err:?}")))?;
                prop_assert_eq!(joined.id, sub(person));
                if !self.online.iter().any(|(p, _)| *p == person) {
                    self.online.push((person, None));
                }
                self.members.push(Membership {
                    person,
                    token: joined.token,
                    online: true,
                    streams: 0,
                    deadline: Some(Instant::now() + JOIN_TIMEOUT),
                });
            }
            Op::Leave(index) => {
                if let Some(member) = self.pick(index) {
                    let left = self.presence.leave(&self.members[member].token);
                    prop_assert_eq!(left.is_ok(), self.members[member].online);
                    if self.members[member].online {
                        self.end(member);
                    }
                }
            }
            Op::Open(index) => {
                if let Some(member) = self.pick(index) {
                    let opened = self.presence.subscribe(&self.members[member].token, None);
                    let membership = &mut self.members[member];
                    let open = membership.online && membership.streams < 4;
                    prop_assert_eq!(opened.is_ok(), open, "{:?}", opened.as_ref().err());
                    if let Ok(mut subscription) = opened {
                        membership.streams += 1;
                        membership.deadline = None;
                        let snapshot = parse_frames(&subscription.take_start());
                        let view = snapshot[0].data["users"]
                            .as_array()
                            .expect("a users array")
                            .clone();
                        self.clients.push(Client {
                            member,
                            subscription,
                            view,
                        });
                    }
                }
            }
            Op::Drop(index) => {
                if !self.clients.is_empty() {
                    let client = self.clients.remove(index.index(self.clients.len()));
                    let membership = &mut self.members[client.member];
                    if membership.online {
                        membership.streams -= 1;
                        if membership.streams == 0 {
                            membership.deadline = Some(Instant::now() + GRACE);
                        }
                    }
                }
            }
            Op::Say(index, state) => {
                if let Some(member) = self.pick(index) {
                    let said = UserState::parse(STATES[state].as_bytes()).expect("a state");
                    let set = self.presence.set_state(&self.members[member].token, said);
                    prop_assert_eq!(set.is_ok(), self.members[member].online);
                    let person = self.members[member].person;
                    if set.is_ok()
                        && let Some(entry) = self.online.iter_mut().find(|(p, _)| *p == person)
                    {
                        entry.1 = Some(serde_json::from_str(STATES[state]).expect("JSON"));
                    }
                }
            }
            Op::Advance(by) => {
                tokio::time::advance(by).await;
                let now = Instant::now();
                let due: Vec<usize> = (0..self.members.len())
                    .filter(|&m| self.members[m].deadline.is_some_and(|at| at <= now))
                    .collect();
                for member in due {
                    self.end(member);
                }
            }
        }
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        self.check()
    }

    fn check(&mut self) -> Result<(), TestCaseError> {
        let users: Vec<Value> = self
            .presence
            .users()
            .iter()
            .map(|user| serde_json::to_value(user).expect("JSON"))
            .collect();
        prop_assert_eq!(&users, &self.expected(), "the users list");
        let mut still = Vec::new();
        for mut client in std::mem::take(&mut self.clients) {
            let mut batch = Vec::new();
            let waiting = client.subscription.read_waiting(&mut batch, usize::MAX);
            for frame in parse_frames(&batch.concat()) {
                apply(&mut client.view, &frame)?;
            }
            let member_online = self.members[client.member].online;
            if waiting == Waiting::Left {
                prop_assert!(!member_online, "a stream of a live membership ended");
                continue;
            }
            prop_assert_eq!(waiting, Waiting::Open);
            prop_assert!(member_online, "a stream of an ended membership goes on");
            prop_assert_eq!(&client.view, &users, "a stream's view");
            still.push(client);
        }
        self.clients = still;
        Ok(())
    }
}

/// Applies one event to a client's view, as a page does.
fn apply(view: &mut Vec<Value>, frame: &Frame) -> Result<(), TestCaseError> {
    let id = &frame.data["id"];
    let at = view.iter().position(|user| &user["id"] == id);
    match (frame.event.as_str(), at) {
        ("new_user", None) => view.push(frame.data.clone()),
        ("disconnect_user", Some(at)) => {
            view.remove(at);
        }
        ("user_updated", Some(at)) => view[at] = frame.data.clone(),
        (event, at) => {
            return Err(TestCaseError::fail(format!(
                "{event} for someone {} the view",
                if at.is_some() { "already in" } else { "not in" }
            )));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_stream_sees_each_person_once_with_their_state_as_the_list_does(
        ops in proptest::collection::vec(op(), 1..60)
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let mut run = Run::new();
            for op in &ops {
                run.apply(op).await?;
            }
            Ok::<(), TestCaseError>(())
        })?;
    }
}

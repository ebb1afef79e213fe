//! The Bayeux client as a sans-IO state machine: [`State::handle`] takes one
//! [`Input`] (start, a reply or failure of the request in flight, the timer) and
//! returns the [`Action`]s to perform (send a request, wait, emit an event, stop).
//! The transport loop performs them; all protocol decisions live here and are unit
//! tested without sockets or clocks (the caller passes `now`).
//!
//! Invariants: at most one request is in flight at a time, so exactly one
//! `/meta/connect` is outstanding while connected; every action list ends with
//! exactly one `Send`, `Wait` or `Stop`, so the driver always knows what to wait for.
//! Flow: handshake -> subscribe (all channels, one message each, one HTTP request)
//! -> connect loop; any failure goes through [`State::fail`], which applies advice,
//! backoff and the switch to a new handshake once the session must have expired.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::advice::{Effective, Reconnect};
use super::message::{self, Message};
use super::{BayeuxConfig, BayeuxEvent};

/// Which request is in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Handshake,
    Subscribe,
    Connect,
    Disconnect,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Handshake => "handshake",
            Kind::Subscribe => "subscribe",
            Kind::Connect => "connect",
            Kind::Disconnect => "disconnect",
        }
    }
}

/// One HTTP request to perform: POST `messages` as a JSON array with this timeout.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub kind: Kind,
    pub messages: Vec<Value>,
    pub timeout: Duration,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Perform the request, then feed its outcome back as [`Input::Reply`].
    Send(Request),
    /// Sleep, then feed [`Input::Timer`].
    Wait(Duration),
    /// Deliver an event to the listener (awaiting the bounded channel).
    Emit(BayeuxEvent),
    /// The session is over; end the task.
    Stop,
}

/// Why a request produced no usable messages. The text never contains headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// The server answered with a non-2xx HTTP status.
    Http(u16),
    /// Connect/read/timeout failure.
    Transport(crate::upstream::Transport),
    /// The body was not a Bayeux message array (or was too large).
    Malformed(String),
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::Http(s) => write!(f, "HTTP {s}"),
            RequestError::Transport(e) => write!(f, "transport error: {e}"),
            RequestError::Malformed(e) => write!(f, "malformed response: {e}"),
        }
    }
}

/// Everything that can happen to the machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Start,
    Reply {
        kind: Kind,
        result: Result<Vec<Message>, RequestError>,
    },
    Timer,
}

/// The step to take when a wait ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Handshake,
    Subscribe,
    Connect,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Idle,
    InFlight(Kind),
    Waiting(Step),
    Done,
}

/// Longest server error text carried into an event reason.
const MAX_REASON_CHARS: usize = 200;

/// The client session state.
#[derive(Debug)]
pub struct State {
    channels: Vec<String>,
    network_allowance: Duration,
    request_timeout: Duration,
    max_backoff: Duration,
    use_ack: bool,

    phase: Phase,
    advice: Effective,
    client_id: Option<String>,
    /// `Some(last batch id)` when the server accepted the acknowledgement extension.
    ack: Option<i64>,
    next_id: u64,
    /// Id of the handshake or connect in flight.
    in_flight_id: Option<String>,
    /// `(message id, channel)` of the subscriptions in flight.
    pending_subs: Vec<(String, String)>,
    /// Channels not yet confirmed in the current server session.
    unconfirmed: Vec<String>,
    /// Consecutive failures since the last successful connect (drives the backoff).
    failures: u32,
    /// When the current server session stopped working (drives the re-handshake).
    failing_since: Option<Instant>,
    /// `Subscribed` has been sent at least once.
    subscribed_once: bool,
    /// The session is working: `Subscribed` sent and no `Lost` since.
    working: bool,
    /// `Lost` sent; the next working session is announced as restored.
    lost: bool,
}

impl State {
    pub fn new(config: &BayeuxConfig) -> Self {
        Self {
            channels: config.channels.clone(),
            network_allowance: config.network_allowance,
            request_timeout: config.request_timeout,
            max_backoff: config.max_backoff,
            use_ack: config.use_ack,
            phase: Phase::Idle,
            advice: Effective::default(),
            client_id: None,
            ack: None,
            next_id: 0,
            in_flight_id: None,
            pending_subs: Vec::new(),
            unconfirmed: config.channels.clone(),
            failures: 0,
            failing_since: None,
            subscribed_once: false,
            working: false,
            lost: false,
        }
    }

    /// Advances the machine by one input.
    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Action> {
        match (input, self.phase.clone()) {
            (Input::Start, Phase::Idle) => self.step(Step::Handshake),
            (Input::Timer, Phase::Waiting(step)) => self.step(step),
            (Input::Reply { kind, result }, Phase::InFlight(expected)) if kind == expected => {
                self.on_reply(kind, result, now)
            }
            // Stale input (e.g. a reply after Done): nothing to do, keep waiting.
            (input, phase) => {
                tracing::debug!(?phase, input = input_name(&input), "bayeux: ignoring input");
                Vec::new()
            }
        }
    }

    /// The best-effort `/meta/disconnect` to send on shutdown, if a session exists.
    /// Ends the machine either way.
    pub fn disconnect_request(&mut self) -> Option<Request> {
        self.phase = Phase::Done;
        let client_id = self.client_id.take()?;
        let id = self.new_id();
        Some(Request {
            kind: Kind::Disconnect,
            messages: vec![message::disconnect(&id, &client_id)],
            timeout: self.request_timeout,
        })
    }

    fn new_id(&mut self) -> String {
        self.next_id += 1;
        self.next_id.to_string()
    }

    /// Starts `step` now: builds its request.
    fn step(&mut self, step: Step) -> Vec<Action> {
        let client_id = match (step, self.client_id.clone()) {
            (Step::Handshake, _) | (_, None) => return vec![self.send_handshake()],
            (_, Some(c)) => c,
        };
        match step {
            Step::Subscribe if self.unconfirmed.is_empty() => self.on_all_subscribed(),
            Step::Subscribe => {
                let mut messages = Vec::with_capacity(self.unconfirmed.len());
                self.pending_subs.clear();
                for channel in self.unconfirmed.clone() {
                    let id = self.new_id();
                    messages.push(message::subscribe(&id, &client_id, &channel));
                    self.pending_subs.push((id, channel));
                }
                self.phase = Phase::InFlight(Kind::Subscribe);
                vec![Action::Send(Request {
                    kind: Kind::Subscribe,
                    messages,
                    timeout: self.request_timeout,
                })]
            }
            _ => {
                let id = self.new_id();
                let msg = message::connect(&id, &client_id, self.ack, false);
                self.in_flight_id = Some(id);
                self.phase = Phase::InFlight(Kind::Connect);
                vec![Action::Send(Request {
                    kind: Kind::Connect,
                    messages: vec![msg],
                    timeout: self.advice.connect_timeout(self.network_allowance),
                })]
            }
        }
    }

    fn send_handshake(&mut self) -> Action {
        // A handshake starts a new server session: nothing of the old one survives.
        self.client_id = None;
        self.ack = None;
        self.unconfirmed = self.channels.clone();
        let id = self.new_id();
        let msg = message::handshake(&id, self.use_ack);
        self.in_flight_id = Some(id);
        self.phase = Phase::InFlight(Kind::Handshake);
        Action::Send(Request {
            kind: Kind::Handshake,
            messages: vec![msg],
            timeout: self.request_timeout,
        })
    }

    fn on_reply(
        &mut self,
        kind: Kind,
        result: Result<Vec<Message>, RequestError>,
        now: Instant,
    ) -> Vec<Action> {
        let msgs = match result {
            Ok(msgs) => msgs,
            // Refused credentials or CSRF token: retrying the same request cannot fix it,
            // so stop and let the owner decide (it refreshes the CSRF token once).
            Err(RequestError::Http(status @ (401 | 403))) => {
                return self.terminate(
                    format!("{} refused: HTTP {status}", kind.name()),
                    Some(status),
                );
            }
            Err(e) => {
                return self.fail(
                    format!("{} failed: {e}", kind.name()),
                    kind,
                    now,
                    Vec::new(),
                );
            }
        };
        // Events in arrival order; they are delivered whatever the meta outcome, as the
        // server has already dequeued them (with acks, only connect replies carry any).
        let mut events = Vec::new();
        let mut advice_none = false;
        for m in &msgs {
            if m.is_meta() {
                if let Some(advice) = &m.advice {
                    self.advice = Effective::from_advice(advice);
                    advice_none = self.advice.reconnect == Reconnect::None;
                }
            } else {
                events.push(Action::Emit(BayeuxEvent::Message {
                    channel: m.channel.clone(),
                    data: m.data.clone().unwrap_or(Value::Null),
                }));
            }
        }
        if advice_none {
            let mut actions = events;
            actions.extend(self.terminate(
                format!("server advised reconnect none on {}", kind.name()),
                None,
            ));
            return actions;
        }
        match kind {
            Kind::Handshake => self.on_handshake(&msgs, events, now),
            Kind::Subscribe => self.on_subscribe(&msgs, events, now),
            Kind::Connect => self.on_connect(&msgs, events, now),
            Kind::Disconnect => Vec::new(),
        }
    }

    fn on_handshake(
        &mut self,
        msgs: &[Message],
        mut events: Vec<Action>,
        now: Instant,
    ) -> Vec<Action> {
        let reply = find_reply(msgs, "/meta/handshake", self.in_flight_id.as_deref());
        match reply {
            Some(r) if r.successful && r.client_id.is_some() => {
                self.client_id = r.client_id.clone();
                self.ack = (self.use_ack && message::ack_offered(r.ext_ack.as_ref())).then_some(0);
                // A fresh server session: its expiry clock starts now.
                self.failing_since = None;
                // A "handshake" instruction is obeyed once done; if this reply carried no
                // advice of its own, a stale one must not turn the next retry into
                // another handshake.
                if self.advice.reconnect == Reconnect::Handshake {
                    self.advice.reconnect = Reconnect::Retry;
                }
                tracing::debug!(ack = self.ack.is_some(), "bayeux: handshake successful");
                events.extend(self.step(Step::Subscribe));
                events
            }
            r => self.fail(unsuccessful("handshake", r), Kind::Handshake, now, events),
        }
    }

    fn on_subscribe(&mut self, msgs: &[Message], events: Vec<Action>, now: Instant) -> Vec<Action> {
        let mut refused = Vec::new();
        for (id, channel) in std::mem::take(&mut self.pending_subs) {
            match find_reply(msgs, "/meta/subscribe", Some(&id)) {
                Some(r) if r.successful => self.unconfirmed.retain(|c| *c != channel),
                r => refused.push(format!("{channel}: {}", unsuccessful("subscribe", r))),
            }
        }
        let mut actions = events;
        if refused.is_empty() {
            actions.extend(self.on_all_subscribed());
            actions
        } else {
            self.fail(refused.join("; "), Kind::Subscribe, now, actions)
        }
    }

    /// Every channel is confirmed: announce it and start the connect loop.
    fn on_all_subscribed(&mut self) -> Vec<Action> {
        let restored = self.subscribed_once;
        self.subscribed_once = true;
        self.working = true;
        self.lost = false;
        let mut actions = vec![Action::Emit(BayeuxEvent::Subscribed { restored })];
        actions.extend(self.step(Step::Connect));
        actions
    }

    fn on_connect(&mut self, msgs: &[Message], events: Vec<Action>, now: Instant) -> Vec<Action> {
        let reply = find_reply(msgs, "/meta/connect", self.in_flight_id.as_deref());
        match reply {
            Some(r) if r.successful => {
                if self.ack.is_some()
                    && let Some(batch) = message::ack_batch(r.ext_ack.as_ref())
                {
                    self.ack = Some(batch);
                }
                self.failures = 0;
                self.failing_since = None;
                let mut actions = Vec::with_capacity(events.len() + 2);
                if self.lost {
                    // Same server session, working again: announce before its events.
                    self.lost = false;
                    self.working = true;
                    actions.push(Action::Emit(BayeuxEvent::Subscribed { restored: true }));
                }
                actions.extend(events);
                if self.advice.interval.is_zero() {
                    actions.extend(self.step(Step::Connect));
                } else {
                    self.phase = Phase::Waiting(Step::Connect);
                    actions.push(Action::Wait(self.advice.interval));
                }
                actions
            }
            r => self.fail(unsuccessful("connect", r), Kind::Connect, now, events),
        }
    }

    /// A request failed (transport, HTTP, garbage, or an unsuccessful reply):
    /// report the outage once, then retry after the backoff, with a new handshake
    /// if the server asked for one or the session must have expired by now.
    fn fail(
        &mut self,
        reason: String,
        kind: Kind,
        now: Instant,
        mut actions: Vec<Action>,
    ) -> Vec<Action> {
        if self.advice.reconnect == Reconnect::None {
            actions.extend(self.terminate(reason, None));
            return actions;
        }
        self.failures = self.failures.saturating_add(1);
        let since = *self.failing_since.get_or_insert(now);
        let mut step = match kind {
            Kind::Subscribe => Step::Subscribe,
            Kind::Connect => Step::Connect,
            Kind::Handshake | Kind::Disconnect => Step::Handshake,
        };
        if self.advice.reconnect == Reconnect::Handshake
            || self.client_id.is_none()
            || now.saturating_duration_since(since) >= self.advice.session_expiry()
        {
            step = Step::Handshake;
        }
        tracing::warn!(%reason, failures = self.failures, next = ?step, "bayeux: request failed");
        if self.working {
            self.working = false;
            self.lost = true;
            actions.push(Action::Emit(BayeuxEvent::Lost { reason }));
        }
        let delay = self.advice.backoff(self.failures, self.max_backoff);
        if delay.is_zero() {
            actions.extend(self.step(step));
        } else {
            self.phase = Phase::Waiting(step);
            actions.push(Action::Wait(delay));
        }
        actions
    }

    fn terminate(&mut self, reason: String, http_status: Option<u16>) -> Vec<Action> {
        tracing::warn!(%reason, ?http_status, "bayeux: giving up");
        self.phase = Phase::Done;
        self.client_id = None;
        vec![
            Action::Emit(BayeuxEvent::Failed {
                reason,
                http_status,
            }),
            Action::Stop,
        ]
    }
}

/// The meta reply on `channel` answering `id`; a reply without id is accepted as a
/// fallback because not every server echoes ids.
fn find_reply<'a>(msgs: &'a [Message], channel: &str, id: Option<&str>) -> Option<&'a Message> {
    let on_channel = || msgs.iter().filter(move |m| m.channel == channel);
    on_channel()
        .find(|m| m.id.is_some() && m.id.as_deref() == id)
        .or_else(|| on_channel().find(|m| m.id.is_none()))
}

/// The reason text for a missing or unsuccessful meta reply.
fn unsuccessful(what: &str, reply: Option<&Message>) -> String {
    match reply.and_then(|r| r.error.as_deref()) {
        Some(error) => {
            let error: String = error.chars().take(MAX_REASON_CHARS).collect();
            format!("{what} unsuccessful: {error}")
        }
        None if reply.is_some() => format!("{what} unsuccessful"),
        None => format!("{what} reply missing"),
    }
}

fn input_name(input: &Input) -> &'static str {
    match input {
        Input::Start => "start",
        Input::Reply { .. } => "reply",
        Input::Timer => "timer",
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;

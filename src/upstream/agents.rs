//! Per-agent upstream state over one shared HTTP client.
//!
//! One `reqwest::Client` (one connection pool, one TLS configuration) carries every agent's
//! requests, REST and CometD. What belongs to an agent travels in headers it adds itself:
//! its Basic `authorization` (marked sensitive), and the `Cookie` header built from its own
//! cookie jar, into which each of its replies' `Set-Cookie` is stored back
//! ([`Agent::request`], [`Agent::absorb`]). The client has no cookie store, so a pooled
//! connection carries no state from one agent's request to the next: isolation holds by
//! construction, since an agent's jar is reachable only through its [`Agent`], which the
//! registry hands out only for its key.
//!
//! An agent's state exists only once GWS accepted its credential (or for the configured
//! default agent): the first call of an unknown credential runs a check upstream (a probe,
//! e.g. `GET /api/v2/me`) on a provisional state that is inserted only when the probe shows
//! GWS authenticated it. Concurrent first calls of one credential share one check.
//!
//! Admission is sized so that a restart does not refuse valid agents, while a spray of
//! random credentials still costs GWS little: at most `new_agent_concurrency` checks run at
//! once (later ones wait their turn, in arrival order, within their deadline), and each check
//! takes a token from a bucket (`new_agent_burst`, refilled at `new_agent_rate`) when it
//! starts. A check that GWS accepts gives its token back, so only refused (or unanswered)
//! credentials drain the bucket: valid agents are admitted as fast as GWS answers, and
//! refused ones cost at most the burst plus the rate. States are bounded in number and
//! evicted when idle and unused. States are keyed by [`AgentKey`] (a hash, never the credential in
//! clear).

use super::cookies::Cookies;
use super::unsettled::Unsettled;
use super::{AgentKey, Credential, Transport, UpstreamError};
use http::{HeaderName, HeaderValue};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Idle connections kept per upstream host. One busy agent runs up to 32 concurrent calls
/// and every CometD session parks one long-poll; 256 idle connections keep a burst of a
/// few busy agents from closing and reopening connections, at a few KiB each.
const POOL_MAX_IDLE_PER_HOST: usize = 256;
/// An idle pooled connection is closed after this by default. Below the usual 60 s idle timeouts of
/// load balancers and servlet containers in front of GWS, so the gateway closes first and
/// never writes into a connection the far side is closing.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);
/// TCP keep-alive probes on upstream sockets, so a long-poll parked on a dead path (NAT
/// or firewall dropped it) is noticed even between CometD timeouts.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);

/// Limits of the agent registry and settings of the shared HTTP client.
#[derive(Debug, Clone)]
pub struct AgentsConfig {
    /// Most agents whose state is kept at once.
    pub max_agents: usize,
    /// An agent unused this long (and held by no call or stream) is forgotten.
    pub idle_ttl: Duration,
    /// TCP/TLS connect timeout towards GWS.
    pub connect_timeout: Duration,
    /// Extra trust roots and client identity for an HTTPS GWS.
    pub tls: crate::tls::UpstreamTls,
    /// GWS is reached over plain `http://`: the client then loads no TLS trust roots at all.
    pub plain_http: bool,
    /// First-time credential checks started per second, on average.
    pub new_agent_rate: f64,
    /// First-time credential checks that may start at once after a quiet period.
    pub new_agent_burst: u32,
    /// First-time credential checks under way at once; more wait for a turn. Capped at
    /// `new_agent_burst`, so checks of valid credentials in flight can never hold every
    /// token and refuse the next valid one.
    pub new_agent_concurrency: usize,
    /// Trusted without a check (the operator's default agent); kept for the whole run.
    pub trusted: Option<Credential>,
    /// An idle pooled connection is closed after this (`--upstream-idle-timeout`).
    pub pool_idle_timeout: Duration,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        Self {
            max_agents: 10_000,
            idle_ttl: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(5),
            tls: crate::tls::UpstreamTls::default(),
            plain_http: false,
            new_agent_rate: 50.0,
            new_agent_burst: 100,
            new_agent_concurrency: 64,
            trusted: None,
            pool_idle_timeout: POOL_IDLE_TIMEOUT,
        }
    }
}

/// What the gateway knows of an agent's CSRF protection upstream.
#[derive(Debug, Clone, PartialEq)]
pub enum Csrf {
    /// Not asked yet: the next write first reads `GET /api/v2/me`.
    Unknown,
    /// GWS sent no CSRF headers: protection is off.
    Disabled,
    /// Send `name: value` on every POST/PUT/DELETE.
    Token {
        name: HeaderName,
        value: HeaderValue,
    },
}

/// One agent's upstream state. Shared as `Arc<Agent>`; whoever holds one keeps it alive.
pub struct Agent {
    key: AgentKey,
    /// `Basic ...`, marked sensitive: hyper and reqwest never print it.
    authorization: HeaderValue,
    /// This agent's cookies (`JSESSIONID`); never installed on the shared client.
    cookies: Cookies,
    csrf: Mutex<Csrf>,
    /// When last handed out, in milliseconds since [`origin`]: an atomic, so the hot path
    /// takes no lock for it.
    last_used: AtomicU64,
    /// What was sent on each session and not heard the end of (shared with the agent's
    /// event feed, which asks it before pinning an Error on a waiting call).
    unsettled: Arc<Unsettled>,
}

/// The instant `last_used` counts from.
fn origin() -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn millis_since_origin(at: Instant) -> u64 {
    at.saturating_duration_since(origin()).as_millis() as u64
}

// By hand: neither the credential nor the cookies may be printed.
impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("key", &self.key).finish()
    }
}

impl Agent {
    /// A fresh state for `credential`, outside any registry (the registry makes its own
    /// after the credential's check; tools and tests use this directly).
    pub fn new(credential: &Credential) -> Result<Self, UpstreamError> {
        let mut authorization = HeaderValue::from_str(&credential.authorization())
            .map_err(|_| UpstreamError::Unreachable(Transport::Request))?;
        authorization.set_sensitive(true);
        Ok(Self {
            key: credential.key(),
            authorization,
            cookies: Cookies::default(),
            csrf: Mutex::new(Csrf::Unknown),
            last_used: AtomicU64::new(millis_since_origin(Instant::now())),
            unsettled: Arc::default(),
        })
    }

    pub fn key(&self) -> AgentKey {
        self.key
    }

    /// Bytes that identify the credential (its `authorization` value), for a keyed hash that
    /// names the agent across replicas (cluster mode). Never to be logged or sent.
    pub fn key_material(&self) -> &[u8] {
        self.authorization.as_bytes()
    }

    /// A request on the shared `client` carrying this agent's credentials and cookies. Pass
    /// its reply to [`Agent::absorb`].
    pub fn request(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        url: reqwest::Url,
    ) -> reqwest::RequestBuilder {
        let cookies = self.cookies.header(&url);
        let mut request = client
            .request(method, url)
            .header(http::header::AUTHORIZATION, self.authorization.clone());
        if let Some(cookies) = cookies {
            request = request.header(http::header::COOKIE, cookies);
        }
        request
    }

    /// Stores the reply's `Set-Cookie` headers in this agent's jar.
    pub fn absorb(&self, response: &reqwest::Response) {
        let set = response.headers().get_all(http::header::SET_COOKIE);
        // Most replies set nothing: they keep the jar's header as it is.
        if set.iter().next().is_some() {
            self.cookies.absorb(set.iter(), response.url());
        }
    }

    /// The operations on this agent's sessions whose end is not known yet.
    pub fn unsettled(&self) -> &Arc<Unsettled> {
        &self.unsettled
    }

    pub fn csrf(&self) -> Csrf {
        self.csrf.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_csrf(&self, csrf: Csrf) {
        *self.csrf.lock().unwrap_or_else(|e| e.into_inner()) = csrf;
    }

    fn touch(&self) {
        self.last_used
            .store(millis_since_origin(Instant::now()), Ordering::Relaxed);
    }

    fn idle_for(&self, now: Instant) -> Duration {
        let last = self.last_used.load(Ordering::Relaxed);
        Duration::from_millis(millis_since_origin(now).saturating_sub(last))
    }
}

/// What a probe's result says about the credential it was sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// GWS authenticated the request (whatever it then answered).
    Accepted,
    /// GWS refused the credential.
    Refused,
    /// No answer that says either way (GWS unreachable, timed out, a proxy's error page).
    Unknown,
}

impl Verdict {
    pub fn of<T>(result: &Result<T, UpstreamError>) -> Self {
        match result {
            Ok(_) => Verdict::Accepted,
            Err(UpstreamError::Gws {
                status_code: 20, ..
            })
            | Err(UpstreamError::Gws {
                http_status: 401, ..
            })
            | Err(UpstreamError::Http {
                http_status: 401, ..
            }) => Verdict::Refused,
            // A GWS status body past authentication (not found, forbidden operation, ...).
            Err(UpstreamError::Gws { .. }) | Err(UpstreamError::Unmappable(_)) => Verdict::Accepted,
            Err(_) => Verdict::Unknown,
        }
    }
}

/// A token bucket: `burst` tokens, refilled at `rate` per second. A token taken by a check
/// is `held` until the check settles: given back if GWS accepted the credential.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    held: u32,
    at: Instant,
}

impl TokenBucket {
    fn new(rate: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: rate.max(f64::MIN_POSITIVE),
            burst,
            tokens: burst,
            held: 0,
            at: now,
        }
    }

    /// Takes a token (held until [`TokenBucket::settle`]), or says how long until one is
    /// there.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.held += 1;
            Ok(())
        } else {
            Err(self.wait())
        }
    }

    /// Whether a token may be there for a check that waits for its turn: one is now, or a
    /// check under way holds one it may give back.
    fn may_have(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 || self.held > 0 {
            Ok(())
        } else {
            Err(self.wait())
        }
    }

    /// Ends a check that took a token, giving it back or not.
    fn settle(&mut self, give_back: bool) {
        self.held = self.held.saturating_sub(1);
        if give_back {
            self.tokens = (self.tokens + 1.0).min(self.burst);
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
    }

    fn wait(&self) -> Duration {
        let wait = ((1.0 - self.tokens) / self.rate).min(3600.0);
        Duration::from_secs_f64(wait).max(Duration::from_millis(1))
    }
}

/// The outcome of a shared check, as followers see it.
type Shared = Option<Result<Arc<Agent>, UpstreamError>>;

/// All agents' states and the one HTTP client they share. A cloneable handle.
#[derive(Debug, Clone)]
pub struct AgentRegistry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: AgentsConfig,
    http: reqwest::Client,
    maps: Mutex<Maps>,
    /// Turns to run a first-time check (`new_agent_concurrency` of them). Tokio's semaphore
    /// is fair: waiters get a turn in the order they asked.
    check_turns: tokio::sync::Semaphore,
    /// How many turns there are.
    turns: usize,
    /// The trusted default agent, held here so it is never evicted.
    _pinned: Option<Arc<Agent>>,
}

#[derive(Debug)]
struct Maps {
    agents: HashMap<AgentKey, Arc<Agent>>,
    /// Checks under way: followers wait for the leader's outcome. The entry (and with it the
    /// sender) goes when the leader ends, however it ends: a follower whose leader was
    /// cancelled sees the channel closed and starts over.
    checks: HashMap<AgentKey, watch::Receiver<Shared>>,
    bucket: TokenBucket,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let held = self.maps.get_mut().map_or(0, |m| m.agents.len());
        crate::metrics::AGENTS.dec_by(held as i64);
    }
}

/// Why the shared HTTP client could not be built (at start-up, before serving).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the upstream HTTP client: {0}")]
pub struct ClientError(String);

/// The one upstream HTTP client: every agent's REST and CometD requests share its pool.
pub fn build_client(config: &AgentsConfig) -> Result<reqwest::Client, ClientError> {
    let builder = reqwest::Client::builder();
    let builder = if config.plain_http {
        // No trust roots to load: the system store is never read for a plain-HTTP GWS.
        builder.tls_certs_only(std::iter::empty())
    } else {
        config.tls.apply(builder)
    };
    builder
        // A redirect could carry the Basic credentials to another host: never follow.
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(config.connect_timeout)
        // Small request bodies and latency-bound replies: Nagle would only delay them.
        .tcp_nodelay(true)
        .tcp_keepalive(TCP_KEEPALIVE)
        .pool_idle_timeout(config.pool_idle_timeout)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .build()
        .map_err(|e| ClientError(e.to_string()))
}

/// A running check's turn and token. Dropped when the probe ends, or when its caller goes
/// away mid-probe (then charged: the request may have reached GWS).
struct CheckTurn<'a> {
    _permit: tokio::sync::SemaphorePermit<'a>,
    registry: &'a AgentRegistry,
    give_back: bool,
}

impl Drop for CheckTurn<'_> {
    fn drop(&mut self) {
        self.registry.maps().bucket.settle(self.give_back);
    }
}

impl AgentRegistry {
    pub fn new(config: AgentsConfig) -> Result<Self, ClientError> {
        let http = build_client(&config)?;
        let mut agents = HashMap::new();
        let pinned = match &config.trusted {
            Some(credential) => {
                let agent = Arc::new(
                    Agent::new(credential)
                        .map_err(|e| ClientError(format!("default agent: {e}")))?,
                );
                agents.insert(agent.key(), agent.clone());
                crate::metrics::AGENTS.inc();
                Some(agent)
            }
            None => None,
        };
        let bucket = TokenBucket::new(
            config.new_agent_rate,
            config.new_agent_burst,
            Instant::now(),
        );
        let turns = config
            .new_agent_concurrency
            .clamp(1, config.new_agent_burst.max(1) as usize);
        Ok(Self {
            inner: Arc::new(Inner {
                check_turns: tokio::sync::Semaphore::new(turns),
                turns,
                config,
                http,
                maps: Mutex::new(Maps {
                    agents,
                    checks: HashMap::new(),
                    bucket,
                }),
                _pinned: pinned,
            }),
        })
    }

    /// The shared HTTP client. Requests on it carry no agent's state: build them with
    /// [`Agent::request`].
    pub fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    fn maps(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.inner.maps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The known agent under `key`, if any.
    pub fn get(&self, key: &AgentKey) -> Option<Arc<Agent>> {
        let maps = self.maps();
        let agent = maps.agents.get(key)?;
        agent.touch();
        Some(agent.clone())
    }

    /// The state of `credential`'s agent (`key` is its key). A known agent is returned at
    /// once, with `None`. An unknown one is checked first: `probe` runs on a provisional
    /// state, which joins the registry only if the probe's result shows GWS accepted the
    /// credential; the caller that ran it gets the probe's result back (its first request is
    /// done). Concurrent callers of the same credential wait for that one check. A refused
    /// credential leaves nothing behind. A check waits for a turn (see the module's doc);
    /// fails without any upstream request when the registry is full or no token is left for
    /// a check.
    pub async fn admit<T, F, Fut>(
        &self,
        key: AgentKey,
        credential: &Credential,
        turn_by: tokio::time::Instant,
        probe: F,
    ) -> Result<(Arc<Agent>, Option<Result<T, UpstreamError>>), UpstreamError>
    where
        F: FnOnce(Arc<Agent>) -> Fut,
        Fut: Future<Output = Result<T, UpstreamError>>,
    {
        let mut probe = Some(probe);
        loop {
            let sender = {
                let mut maps = self.maps();
                if let Some(agent) = maps.agents.get(&key) {
                    agent.touch();
                    return Ok((agent.clone(), None));
                }
                match maps.checks.get(&key) {
                    Some(rx) => Err(rx.clone()),
                    None => {
                        self.make_room(&mut maps)?;
                        // No token, and none that may come back: refuse at once rather
                        // than wait for a turn that would find none either.
                        maps.bucket
                            .may_have(Instant::now())
                            .map_err(|retry_after| UpstreamError::RateLimited { retry_after })?;
                        let (tx, rx) = watch::channel(None);
                        maps.checks.insert(key, rx);
                        Ok(tx)
                    }
                }
            };
            match sender {
                Ok(tx) => {
                    let probe = probe.take().expect("one leader per call");
                    return self.lead(key, credential, turn_by, tx, probe).await;
                }
                Err(mut rx) => {
                    // Followed: the leader's verdict is ours. A closed channel without one
                    // means the leader was cancelled: start over.
                    if let Ok(outcome) = rx.wait_for(Option::is_some).await
                        && let Some(outcome) = outcome.clone()
                    {
                        return outcome.map(|agent| (agent, None));
                    }
                }
            }
        }
    }

    /// Runs the check for `key` and publishes its outcome to the followers.
    async fn lead<T, F, Fut>(
        &self,
        key: AgentKey,
        credential: &Credential,
        turn_by: tokio::time::Instant,
        tx: watch::Sender<Shared>,
        probe: F,
    ) -> Result<(Arc<Agent>, Option<Result<T, UpstreamError>>), UpstreamError>
    where
        F: FnOnce(Arc<Agent>) -> Fut,
        Fut: Future<Output = Result<T, UpstreamError>>,
    {
        /// Removes the check's entry however the leader ends (cancellation included).
        struct Done<'a>(&'a AgentRegistry, AgentKey);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.maps().checks.remove(&self.1);
            }
        }
        let _done = Done(self, key);
        let mut turn = match self.start_check(turn_by).await {
            Ok(turn) => turn,
            Err(refused) => {
                tx.send_replace(Some(Err(refused.clone())));
                return Err(refused);
            }
        };
        let agent = Arc::new(Agent::new(credential)?);
        let result = probe(agent.clone()).await;
        let verdict = Verdict::of(&result);
        // Only credentials GWS refuses (or leaves unanswered) are charged; a check the
        // gateway never sent (no slot, no descriptor) cost GWS nothing.
        turn.give_back = verdict == Verdict::Accepted
            || result.as_ref().err().is_some_and(UpstreamError::never_sent);
        drop(turn);
        let outcome = match verdict {
            Verdict::Accepted => self.insert(agent),
            Verdict::Refused | Verdict::Unknown => {
                tracing::debug!(agent = ?key, "first-time credential check did not admit the agent");
                Err(result
                    .as_ref()
                    .err()
                    .cloned()
                    .unwrap_or(UpstreamError::Unreachable(Transport::Other)))
            }
        };
        tx.send_replace(Some(outcome.clone()));
        outcome.map(|agent| (agent, Some(result)))
    }

    /// Waits for a turn to check a credential until `turn_by`, then takes the check's token.
    /// No turn by then: the gateway's own limit held the check back, and nothing was sent.
    async fn start_check(
        &self,
        turn_by: tokio::time::Instant,
    ) -> Result<CheckTurn<'_>, UpstreamError> {
        let started = tokio::time::Instant::now();
        let turns = &self.inner.check_turns;
        let permit = match tokio::time::timeout_at(turn_by, turns.acquire()).await {
            Ok(permit) => {
                // The semaphore is never closed: acquiring cannot fail.
                permit.map_err(|_| UpstreamError::Unreachable(Transport::Other))?
            }
            Err(_) => {
                return Err(UpstreamError::NoCheckTurn {
                    limit: self.inner.turns,
                    waited: started.elapsed(),
                    callers_deadline: false,
                });
            }
        };
        self.maps()
            .bucket
            .take(Instant::now())
            .map_err(|retry_after| UpstreamError::RateLimited { retry_after })?;
        Ok(CheckTurn {
            _permit: permit,
            registry: self,
            give_back: false,
        })
    }

    fn insert(&self, agent: Arc<Agent>) -> Result<Arc<Agent>, UpstreamError> {
        let mut maps = self.maps();
        if maps.agents.len() >= self.inner.config.max_agents {
            Self::evict(&mut maps.agents, Duration::ZERO);
            if maps.agents.len() >= self.inner.config.max_agents {
                return Err(UpstreamError::TooManyAgents);
            }
        }
        maps.agents.insert(agent.key(), agent.clone());
        crate::metrics::AGENTS.inc();
        Ok(agent)
    }

    /// Fails when the known agents and the checks under way fill the registry, after
    /// evicting unused agents.
    fn make_room(&self, maps: &mut Maps) -> Result<(), UpstreamError> {
        let max = self.inner.config.max_agents;
        if maps.agents.len() + maps.checks.len() >= max {
            Self::evict(&mut maps.agents, Duration::ZERO);
            if maps.agents.len() + maps.checks.len() >= max {
                return Err(UpstreamError::TooManyAgents);
            }
        }
        Ok(())
    }

    /// Forgets agents idle longer than the configured TTL that nobody holds.
    pub fn sweep(&self) -> usize {
        let ttl = self.inner.config.idle_ttl;
        Self::evict(&mut self.maps().agents, ttl)
    }

    pub fn len(&self) -> usize {
        self.maps().agents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn idle_ttl(&self) -> Duration {
        self.inner.config.idle_ttl
    }

    /// Removes agents idle at least `min_idle` and held only by the map (no call, no stream).
    fn evict(agents: &mut HashMap<AgentKey, Arc<Agent>>, min_idle: Duration) -> usize {
        let now = Instant::now();
        let before = agents.len();
        agents.retain(|_, agent| Arc::strong_count(agent) > 1 || agent.idle_for(now) < min_idle);
        let evicted = before - agents.len();
        crate::metrics::AGENTS.dec_by(evicted as i64);
        evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn cred(user: &str) -> Credential {
        Credential::new(user, "pw").unwrap()
    }

    /// A turn deadline no test reaches.
    fn far() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(3600)
    }

    fn registry(config: AgentsConfig) -> AgentRegistry {
        AgentRegistry::new(AgentsConfig {
            plain_http: true,
            ..config
        })
        .unwrap()
    }

    /// Admits `user` with a probe that answers `answer`.
    async fn admit(
        reg: &AgentRegistry,
        user: &str,
        answer: Result<(), UpstreamError>,
    ) -> Result<Arc<Agent>, UpstreamError> {
        let c = cred(user);
        reg.admit(c.key(), &c, far(), |_| async move { answer })
            .await
            .map(|(agent, _)| agent)
    }

    fn refused() -> UpstreamError {
        UpstreamError::Gws {
            status_code: 20,
            status_message: "Not authenticated".into(),
            http_status: 401,
        }
    }

    #[tokio::test]
    async fn same_credential_same_state_different_credential_different_state() {
        let reg = registry(AgentsConfig::default());
        let a1 = admit(&reg, "a", Ok(())).await.unwrap();
        let a2 = admit(&reg, "a", Err(refused())).await.unwrap();
        let b = admit(&reg, "b", Ok(())).await.unwrap();
        assert!(Arc::ptr_eq(&a1, &a2), "a known agent is not probed again");
        assert!(!Arc::ptr_eq(&a1, &b));
        a1.set_csrf(Csrf::Disabled);
        assert_eq!(b.csrf(), Csrf::Unknown, "CSRF state is per agent");
    }

    #[tokio::test]
    async fn refused_or_unanswered_credentials_leave_nothing() {
        let reg = registry(AgentsConfig::default());
        assert_eq!(
            admit(&reg, "a", Err(refused())).await.unwrap_err(),
            refused()
        );
        let down = UpstreamError::Unreachable(Transport::Connect);
        assert_eq!(admit(&reg, "b", Err(down.clone())).await.unwrap_err(), down);
        assert!(reg.is_empty());
        // Past authentication, an error still admits the agent; the leader gets it back.
        let c = cred("c");
        let not_found = UpstreamError::Gws {
            status_code: 6,
            status_message: String::new(),
            http_status: 404,
        };
        let (_, first) = reg
            .admit(c.key(), &c, far(), |_| async {
                Err::<(), _>(not_found.clone())
            })
            .await
            .unwrap();
        assert_eq!(first, Some(Err(not_found.clone())));
        assert_eq!(reg.len(), 1);
    }

    #[tokio::test]
    async fn concurrent_first_calls_share_one_check() {
        let reg = registry(AgentsConfig::default());
        let probes = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let c = cred("a");
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let (reg, c, probes) = (reg.clone(), c.clone(), probes.clone());
                let mut released = released.clone();
                tokio::spawn(async move {
                    reg.admit(c.key(), &c, far(), |_| async move {
                        probes.fetch_add(1, Ordering::SeqCst);
                        let _ = released.wait_for(|r| *r).await;
                        Ok(())
                    })
                    .await
                    .map(|(agent, _)| agent)
                })
            })
            .collect();
        // Wait until the one leader is inside its probe, then let it answer.
        while probes.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        release.send_replace(true);
        let mut agents = Vec::new();
        for call in calls {
            agents.push(call.await.unwrap().unwrap());
        }
        assert_eq!(probes.load(Ordering::SeqCst), 1);
        assert!(agents.iter().all(|a| Arc::ptr_eq(a, &agents[0])));
    }

    #[tokio::test]
    async fn a_cancelled_leader_hands_the_check_over() {
        let reg = registry(AgentsConfig::default());
        let c = cred("a");
        let leader = {
            let (reg, c) = (reg.clone(), c.clone());
            tokio::spawn(async move {
                reg.admit(c.key(), &c, far(), |_| {
                    std::future::pending::<Result<(), _>>()
                })
                .await
            })
        };
        while reg.maps().checks.is_empty() {
            tokio::task::yield_now().await;
        }
        let follower = {
            let (reg, c) = (reg.clone(), c.clone());
            tokio::spawn(async move { admit(&reg, c.user(), Ok(())).await })
        };
        tokio::task::yield_now().await;
        leader.abort();
        assert!(follower.await.unwrap().is_ok());
        assert_eq!(reg.len(), 1);
    }

    /// Admits `user` with a probe that must never run.
    async fn admit_unprobed(reg: &AgentRegistry, user: &str) -> UpstreamError {
        let c = cred(user);
        reg.admit(c.key(), &c, far(), |_| async {
            panic!("no probe beyond the rate")
        })
        .await
        .map(|(_, r): (_, Option<Result<(), _>>)| r)
        .unwrap_err()
    }

    #[tokio::test]
    async fn refused_checks_are_rate_limited_before_any_probe() {
        let reg = registry(AgentsConfig {
            new_agent_rate: 0.001,
            new_agent_burst: 2,
            ..AgentsConfig::default()
        });
        admit(&reg, "a", Ok(())).await.unwrap();
        admit(&reg, "b", Err(refused())).await.unwrap_err();
        admit(&reg, "c", Err(refused())).await.unwrap_err();
        let err = admit_unprobed(&reg, "d").await;
        let UpstreamError::RateLimited { retry_after } = err else {
            panic!("{err:?}")
        };
        assert!(retry_after > Duration::from_secs(60), "{retry_after:?}");
        // Known agents are not checked, so not limited.
        admit(&reg, "a", Ok(())).await.unwrap();
    }

    #[tokio::test]
    async fn accepted_checks_give_their_token_back() {
        let reg = registry(AgentsConfig {
            new_agent_rate: 0.001,
            new_agent_burst: 2,
            ..AgentsConfig::default()
        });
        // Far more valid agents than the burst: none is charged.
        for i in 0..20 {
            admit(&reg, &format!("ok{i}"), Ok(())).await.unwrap();
        }
        // An unanswered check is charged like a refused one: GWS said nothing for it.
        let down = UpstreamError::Unreachable(Transport::Connect);
        assert_eq!(admit(&reg, "x", Err(down.clone())).await.unwrap_err(), down);
        // A check the gateway never sent costs nothing.
        for i in 0..5 {
            let out = UpstreamError::OutOfDescriptors;
            assert_eq!(
                admit(&reg, &format!("n{i}"), Err(out.clone()))
                    .await
                    .unwrap_err(),
                out
            );
        }
        admit(&reg, "y", Err(refused())).await.unwrap_err();
        assert!(matches!(
            admit_unprobed(&reg, "z").await,
            UpstreamError::RateLimited { .. }
        ));
        assert_eq!(reg.len(), 20);
    }

    /// Starts `n` first-time checks of distinct credentials whose probes wait for `release`;
    /// returns the calls and the most probes seen running at once.
    async fn blocked_checks(
        reg: &AgentRegistry,
        n: usize,
        expect_running: usize,
    ) -> Vec<Result<Arc<Agent>, UpstreamError>> {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let calls: Vec<_> = (0..n)
            .map(|i| {
                let (reg, running, most) = (reg.clone(), running.clone(), most.clone());
                let mut released = released.clone();
                tokio::spawn(async move {
                    let c = cred(&format!("agent{i}"));
                    reg.admit(c.key(), &c, far(), |_| async move {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        let _ = released.wait_for(|r| *r).await;
                        running.fetch_sub(1, Ordering::SeqCst);
                        Ok(())
                    })
                    .await
                    .map(|(agent, _)| agent)
                })
            })
            .collect();
        // Every call is either inside its probe or waiting for a turn before release.
        while running.load(Ordering::SeqCst) < expect_running
            || reg.inner.check_turns.available_permits() > 0
        {
            tokio::task::yield_now().await;
        }
        release.send_replace(true);
        let mut out = Vec::new();
        for call in calls {
            out.push(call.await.unwrap());
        }
        assert_eq!(most.load(Ordering::SeqCst), expect_running);
        out
    }

    #[tokio::test]
    async fn checks_beyond_the_concurrency_cap_wait_their_turn() {
        let reg = registry(AgentsConfig {
            new_agent_concurrency: 3,
            ..AgentsConfig::default()
        });
        let results = blocked_checks(&reg, 12, 3).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(reg.len(), 12);
    }

    #[tokio::test]
    async fn no_turn_by_the_deadline_is_the_gateways_own_limit_and_costs_no_token() {
        let reg = registry(AgentsConfig {
            new_agent_rate: 0.001,
            new_agent_burst: 1,
            new_agent_concurrency: 1,
            ..AgentsConfig::default()
        });
        // One check holds the only turn (and the only token).
        let (release, released) = tokio::sync::watch::channel(false);
        let holder = {
            let reg = reg.clone();
            let mut released = released.clone();
            tokio::spawn(async move {
                let c = cred("holder");
                reg.admit(c.key(), &c, far(), |_| async move {
                    let _ = released.wait_for(|r| *r).await;
                    Ok(())
                })
                .await
                .map(|(agent, _)| agent)
            })
        };
        while reg.inner.check_turns.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        let c = cred("late");
        let soon = tokio::time::Instant::now() + Duration::from_millis(20);
        let err = reg
            .admit(c.key(), &c, soon, |_| async {
                panic!("no probe without a turn")
            })
            .await
            .map(|(_, r): (_, Option<Result<(), _>>)| r)
            .unwrap_err();
        assert!(
            matches!(err, UpstreamError::NoCheckTurn { limit: 1, .. }) && err.never_sent(),
            "{err:?}"
        );
        release.send_replace(true);
        holder.await.unwrap().unwrap();
        // The holder was accepted and gave its token back; the late call took none.
        admit(&reg, "next", Ok(())).await.unwrap();
    }

    #[tokio::test]
    async fn concurrency_is_capped_at_the_burst_so_valid_checks_are_never_refused() {
        // With more checks in flight than tokens, a valid one would find the bucket empty.
        let reg = registry(AgentsConfig {
            new_agent_rate: 0.001,
            new_agent_burst: 2,
            new_agent_concurrency: 64,
            ..AgentsConfig::default()
        });
        let results = blocked_checks(&reg, 10, 2).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    }

    #[test]
    fn token_bucket_refills_at_its_rate_up_to_its_burst() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 2, t0);
        assert!(bucket.take(t0).is_ok());
        assert!(bucket.take(t0).is_ok());
        let wait = bucket.take(t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 0.01, "{wait:?}");
        assert!(bucket.take(t0 + Duration::from_millis(100)).is_ok());
        // A long pause refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(60);
        assert!(bucket.take(later).is_ok());
        assert!(bucket.take(later).is_ok());
        assert!(bucket.take(later).is_err());
    }

    #[tokio::test]
    async fn bounded_and_evicts_only_unused_agents() {
        let reg = registry(AgentsConfig {
            max_agents: 2,
            ..AgentsConfig::default()
        });
        let held = admit(&reg, "a", Ok(())).await.unwrap();
        let held_b = admit(&reg, "b", Ok(())).await.unwrap();
        let c = cred("c");
        let full = reg
            .admit(c.key(), &c, far(), |_| async {
                panic!("no probe when full")
            })
            .await
            .map(|(_, r): (_, Option<Result<(), _>>)| r);
        assert_eq!(full.unwrap_err(), UpstreamError::TooManyAgents);
        drop(held_b);
        // "b" is no longer held by anyone: it makes room for "c"; "a" stays.
        let _c = admit(&reg, "c", Ok(())).await.unwrap();
        assert_eq!(reg.len(), 2);
        assert!(Arc::ptr_eq(&held, &reg.get(&cred("a").key()).unwrap()));
    }

    #[tokio::test]
    async fn sweep_forgets_idle_agents_but_never_the_trusted_one() {
        let reg = registry(AgentsConfig {
            idle_ttl: Duration::ZERO,
            trusted: Some(cred("default")),
            ..AgentsConfig::default()
        });
        assert!(
            reg.get(&cred("default").key()).is_some(),
            "trusted: no check"
        );
        let held = admit(&reg, "a", Ok(())).await.unwrap();
        drop(admit(&reg, "b", Ok(())).await.unwrap());
        assert_eq!(reg.sweep(), 1);
        assert_eq!(reg.len(), 2);
        drop(held);
        assert_eq!(reg.sweep(), 1);
        assert_eq!(reg.len(), 1, "the default agent stays");
    }

    #[test]
    fn requests_carry_the_agents_own_cookies_and_sensitive_credentials() {
        let reg = registry(AgentsConfig::default());
        let a = Agent::new(&cred("a")).unwrap();
        let b = Agent::new(&cred("b")).unwrap();
        let url: reqwest::Url = "http://gws:8080/api/v2/me".parse().unwrap();
        let set = HeaderValue::from_static("JSESSIONID=aaa; Path=/; HttpOnly");
        a.cookies.absorb(std::iter::once(&set), &url);
        let req = a
            .request(reg.http(), reqwest::Method::GET, url.clone())
            .build()
            .unwrap();
        assert_eq!(req.headers()[http::header::COOKIE], "JSESSIONID=aaa");
        assert!(req.headers()[http::header::COOKIE].is_sensitive());
        assert!(req.headers()[http::header::AUTHORIZATION].is_sensitive());
        let req = b
            .request(reg.http(), reqwest::Method::GET, url)
            .build()
            .unwrap();
        assert!(req.headers().get(http::header::COOKIE).is_none());
        assert_eq!(
            req.headers()[http::header::AUTHORIZATION],
            cred("b").authorization().as_str()
        );
    }
}

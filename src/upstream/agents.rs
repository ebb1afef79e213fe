//! Per-agent upstream state: each distinct credential gets its own HTTP client with its own
//! cookie jar (`JSESSIONID`), its own CSRF token and its own default `authorization` header,
//! so nothing of one agent's state can ever serve another agent's request: there is no
//! shared jar to leak through. States are keyed by [`AgentKey`] (a hash, never the
//! credential in clear), bounded in number, and evicted when idle and unused.

use super::{AgentKey, Credential, UpstreamError};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Limits of the agent registry and of each agent's HTTP client.
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
}

impl Default for AgentsConfig {
    fn default() -> Self {
        Self {
            max_agents: 1000,
            idle_ttl: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(5),
            tls: crate::tls::UpstreamTls::default(),
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
#[derive(Debug)]
pub struct Agent {
    key: AgentKey,
    http: reqwest::Client,
    csrf: Mutex<Csrf>,
    last_used: Mutex<Instant>,
}

impl Agent {
    fn new(credential: &Credential, config: &AgentsConfig) -> Result<Self, UpstreamError> {
        let mut auth = HeaderValue::from_str(&credential.authorization())
            .map_err(|_| UpstreamError::Unreachable("credentials cannot be sent as a header"))?;
        // Sensitive: hyper and reqwest then never print it in debug output.
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, auth);
        let http = config
            .tls
            .apply(reqwest::Client::builder())
            .cookie_provider(Arc::new(reqwest::cookie::Jar::default()))
            .default_headers(headers)
            // A redirect could carry the Basic credentials to another host: never follow.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(8)
            .build()
            .map_err(|_| UpstreamError::Unreachable("could not build the HTTP client"))?;
        Ok(Self {
            key: credential.key(),
            http,
            csrf: Mutex::new(Csrf::Unknown),
            last_used: Mutex::new(Instant::now()),
        })
    }

    pub fn key(&self) -> AgentKey {
        self.key
    }

    /// This agent's HTTP client: its cookie jar and Basic credentials ride on every request.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn csrf(&self) -> Csrf {
        self.csrf.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_csrf(&self, csrf: Csrf) {
        *self.csrf.lock().unwrap_or_else(|e| e.into_inner()) = csrf;
    }

    fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    fn idle_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(*self.last_used.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// All agents' states. A cloneable handle.
#[derive(Debug, Clone)]
pub struct AgentRegistry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: AgentsConfig,
    agents: Mutex<HashMap<AgentKey, Arc<Agent>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let held = self.agents.get_mut().map_or(0, |a| a.len());
        crate::metrics::AGENTS.add(-(held as i64));
    }
}

impl AgentRegistry {
    pub fn new(config: AgentsConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                agents: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The state of `credential`'s agent, created on first use.
    pub fn agent(&self, credential: &Credential) -> Result<Arc<Agent>, UpstreamError> {
        let key = credential.key();
        let mut agents = self.inner.agents.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(agent) = agents.get(&key) {
            agent.touch();
            return Ok(agent.clone());
        }
        if agents.len() >= self.inner.config.max_agents {
            Self::evict(&mut agents, Duration::ZERO);
            if agents.len() >= self.inner.config.max_agents {
                return Err(UpstreamError::TooManyAgents);
            }
        }
        let agent = Arc::new(Agent::new(credential, &self.inner.config)?);
        agents.insert(key, agent.clone());
        crate::metrics::AGENTS.add(1);
        Ok(agent)
    }

    /// Forgets agents idle longer than the configured TTL that nobody holds.
    pub fn sweep(&self) -> usize {
        let mut agents = self.inner.agents.lock().unwrap_or_else(|e| e.into_inner());
        Self::evict(&mut agents, self.inner.config.idle_ttl)
    }

    pub fn len(&self) -> usize {
        self.inner
            .agents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
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
        crate::metrics::AGENTS.add(-(evicted as i64));
        evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(user: &str) -> Credential {
        Credential::new(user, "pw").unwrap()
    }

    #[test]
    fn same_credential_same_state_different_credential_different_state() {
        let reg = AgentRegistry::new(AgentsConfig::default());
        let a1 = reg.agent(&cred("a")).unwrap();
        let a2 = reg.agent(&cred("a")).unwrap();
        let b = reg.agent(&cred("b")).unwrap();
        assert!(Arc::ptr_eq(&a1, &a2));
        assert!(!Arc::ptr_eq(&a1, &b));
        a1.set_csrf(Csrf::Disabled);
        assert_eq!(b.csrf(), Csrf::Unknown, "CSRF state is per agent");
    }

    #[test]
    fn bounded_and_evicts_only_unused_agents() {
        let reg = AgentRegistry::new(AgentsConfig {
            max_agents: 2,
            ..AgentsConfig::default()
        });
        let held = reg.agent(&cred("a")).unwrap();
        let held_b = reg.agent(&cred("b")).unwrap();
        assert_eq!(
            reg.agent(&cred("c")).unwrap_err(),
            UpstreamError::TooManyAgents
        );
        drop(held_b);
        // "b" is no longer held by anyone: it makes room for "c"; "a" stays.
        let _c = reg.agent(&cred("c")).unwrap();
        assert_eq!(reg.len(), 2);
        assert!(Arc::ptr_eq(&held, &reg.agent(&cred("a")).unwrap()));
    }

    #[test]
    fn sweep_forgets_idle_agents() {
        let reg = AgentRegistry::new(AgentsConfig {
            idle_ttl: Duration::ZERO,
            ..AgentsConfig::default()
        });
        let held = reg.agent(&cred("a")).unwrap();
        drop(reg.agent(&cred("b")).unwrap());
        assert_eq!(reg.sweep(), 1);
        assert_eq!(reg.len(), 1);
        drop(held);
        assert_eq!(reg.sweep(), 1);
        assert!(reg.is_empty());
    }
}

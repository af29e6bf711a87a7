//! Who may use the daemon's HTTP face: the tokens and the web config, loaded with the config
//! (and again at each reload), and the decision for one request.
//!
//! Input: the `daemon` settings (token variables, `web_config`). Output: [`Access`]; then, per
//! request, a [`Principal`] or a refusal ([`Refusal`], 401 or 403).
//!
//! Roles: the operator token (`daemon.api_token_env`) may GET and POST; the read token
//! (`daemon.read_token_env`) and basic-auth users (web config) may GET only. `/healthz` is
//! open; `/metrics` is open unless the web config has `basic_auth_users`, then it asks for any
//! of the credentials above. A token comes from its variable, else from the file named by
//! `<VAR>_FILE` (one trailing newline dropped). The `Authorization` scheme is matched without
//! regard to case (RFC 9110); the presented token is compared exactly, in constant time
//! (SHA-256 of both, then a constant-time comparison, so neither content nor length leaks).
//!
//! The rectification pages (`/r/...`) ask for none of these: the signed link in their path
//! is their authority ([`crate::rectify`]), checked by their handlers; its key
//! (`daemon.link_key_env`, at least 32 bytes) is read here with the tokens. The operator page
//! (`/operator...`) checks its own session cookie, which only the operator token can open
//! (its login form), signed with the same key.

use std::sync::Arc;

use base64::Engine;
use subtle::ConstantTimeEq;

use super::web::WebConfig;
use crate::config::{DaemonSettings, SensorSettings, secret};
use crate::rectify::{LinkKey, MIN_KEY_BYTES};

/// Tokens and web config in force.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// The operator token; `None` = none configured (POST is refused with 403).
    pub operator: Option<String>,
    /// The read-only token.
    pub read: Option<String>,
    pub web: Option<Arc<WebConfig>>,
    /// The key of departments' rectification links (`daemon.link_key_env`); `None` = the
    /// daemon uses the random key kept in its store.
    pub link_key: Option<LinkKey>,
    /// Each sensor's token, by sensor id (`sensors[]`); a sensor whose variable is not set
    /// is absent (its requests get 403).
    pub sensors: Vec<(String, String)>,
}

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The operator token.
    Operator,
    /// The read token.
    Reader,
    /// A basic-auth user of the web config (reads only).
    User(String),
    /// No credentials, on a route that asks for none (`/metrics` without basic auth users).
    Anonymous,
    /// A sensor's own token, on its own routes.
    Sensor(String),
}

impl Principal {
    /// As the audit records it: `operator`, `read`, `user:NAME` or `-`.
    pub fn label(&self) -> String {
        match self {
            Principal::Operator => "operator".to_string(),
            Principal::Reader => "read".to_string(),
            Principal::User(u) => format!("user:{u}"),
            Principal::Anonymous => "-".to_string(),
            Principal::Sensor(id) => format!("sensor:{id}"),
        }
    }
}

/// Why a request was refused, with the credential it presented (for the audit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 401: no credentials, or wrong ones.
    Unauthenticated { presented: Option<String> },
    /// 403: authenticated but not allowed (a reader posting), or the route needs a token
    /// none is configured for.
    Forbidden { who: String, reason: &'static str },
}

/// What a request presents in `Authorization`.
#[derive(Debug, PartialEq, Eq)]
enum Credential<'a> {
    Bearer(&'a str),
    Basic { user: String, password: String },
    Other,
}

fn credential(header: &str) -> Credential<'_> {
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("bearer") {
        return Credential::Bearer(rest);
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        if let Some((user, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) {
            return Credential::Basic {
                user: user.to_string(),
                password: password.to_string(),
            };
        }
    }
    Credential::Other
}

/// Bcrypt checks running at once, at most.
static BCRYPT_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Whether `given` is `expected`, in constant time.
fn same(given: &str, expected: &str) -> bool {
    let digest = |s: &str| ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    let (a, b) = (digest(given), digest(expected));
    a.as_ref().ct_eq(b.as_ref()).into()
}

/// What a route asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// `/metrics`: credentials only when the web config has basic auth users.
    Metrics,
    /// GET `/api/v1/...` and unknown routes: any credential.
    Read,
    /// POST: the operator token.
    Operate,
}

impl Access {
    /// Read the tokens and the web config named by `daemon`. Every problem, one a line.
    pub fn load(
        daemon: &DaemonSettings,
        sensors: &[SensorSettings],
    ) -> Result<Access, Vec<String>> {
        let mut problems = Vec::new();
        let mut token = |var: &str| {
            secret(var).unwrap_or_else(|p| {
                problems.push(p);
                None
            })
        };
        let operator = token(&daemon.api_token_env);
        let read = token(&daemon.read_token_env);
        let sensors = sensors
            .iter()
            .filter_map(|s| token(&s.token_env).map(|t| (s.id.clone(), t)))
            .collect();
        let link_key = token(&daemon.link_key_env).and_then(|k| {
            if k.len() < MIN_KEY_BYTES {
                problems.push(format!(
                    "the link key in {} is {} bytes long: it must have at least {MIN_KEY_BYTES}",
                    daemon.link_key_env,
                    k.len()
                ));
                None
            } else {
                Some(LinkKey::new(k.as_bytes()))
            }
        });
        let web = match &daemon.web_config {
            None => None,
            Some(path) => match WebConfig::load(path) {
                Ok(w) => Some(Arc::new(w)),
                Err(p) => {
                    problems.extend(p);
                    None
                }
            },
        };
        if problems.is_empty() {
            Ok(Access {
                operator,
                read,
                web,
                link_key,
                sensors,
            })
        } else {
            Err(problems)
        }
    }

    /// Decide on a request needing `need` that presented `authorization` (the header's text).
    /// Bcrypt checks run on a blocking thread.
    pub async fn check(
        &self,
        need: Need,
        authorization: Option<&str>,
    ) -> Result<Principal, Refusal> {
        let users = self.web.as_ref().filter(|w| w.has_users());
        if need == Need::Operate && self.operator.is_none() {
            return Err(Refusal::Forbidden {
                who: "-".to_string(),
                reason: "no API token configured",
            });
        }
        let Some(header) = authorization else {
            if need == Need::Metrics && users.is_none() {
                return Ok(Principal::Anonymous);
            }
            if need == Need::Read
                && self.operator.is_none()
                && self.read.is_none()
                && users.is_none()
            {
                return Err(Refusal::Forbidden {
                    who: "-".to_string(),
                    reason: "no API token configured",
                });
            }
            return Err(Refusal::Unauthenticated { presented: None });
        };
        let principal = match credential(header) {
            Credential::Bearer(t) => {
                if self.operator.as_deref().is_some_and(|o| same(t, o)) {
                    Some(Principal::Operator)
                } else if self.read.as_deref().is_some_and(|r| same(t, r)) {
                    Some(Principal::Reader)
                } else {
                    None
                }
            }
            Credential::Basic { user, password } => match users {
                Some(web) => {
                    // Bcrypt is slow by design: a few checks at a time, so a flood of
                    // guesses cannot take every core (the scans need them).
                    let Ok(_slot) = BCRYPT_SLOTS.acquire().await else {
                        return Err(Refusal::Unauthenticated { presented: None });
                    };
                    let (web, name) = (web.clone(), user.clone());
                    let ok = tokio::task::spawn_blocking(move || web.check_user(&name, &password))
                        .await
                        .unwrap_or(false);
                    ok.then_some(Principal::User(user))
                }
                None => None,
            },
            Credential::Other => None,
        };
        let Some(principal) = principal else {
            let presented = match credential(header) {
                Credential::Basic { user, .. } => Some(format!("user:{user}")),
                Credential::Bearer(_) => Some("bearer".to_string()),
                Credential::Other => Some("other".to_string()),
            };
            return Err(Refusal::Unauthenticated { presented });
        };
        if need == Need::Operate && principal != Principal::Operator {
            return Err(Refusal::Forbidden {
                who: principal.label(),
                reason: "this credential may only read (GET); starting scans needs the operator token",
            });
        }
        Ok(principal)
    }
}

impl Access {
    /// Decide on a request to sensor `id`'s routes: only that sensor's own bearer token
    /// passes; any other credential that is valid somewhere (the operator or read token,
    /// another sensor's token) is 403, anything else 401.
    pub fn check_sensor(
        &self,
        id: &str,
        authorization: Option<&str>,
    ) -> Result<Principal, Refusal> {
        let own = self.sensors.iter().find(|(s, _)| s == id).map(|(_, t)| t);
        let Some(header) = authorization else {
            return Err(Refusal::Unauthenticated { presented: None });
        };
        let Credential::Bearer(token) = credential(header) else {
            return Err(Refusal::Unauthenticated {
                presented: Some("other".to_string()),
            });
        };
        if own.is_some_and(|t| same(token, t)) {
            return Ok(Principal::Sensor(id.to_string()));
        }
        let other = if self.operator.as_deref().is_some_and(|o| same(token, o)) {
            Some("operator".to_string())
        } else if self.read.as_deref().is_some_and(|r| same(token, r)) {
            Some("read".to_string())
        } else {
            self.sensors
                .iter()
                .find(|(_, t)| same(token, t))
                .map(|(s, _)| format!("sensor:{s}"))
        };
        match other {
            Some(who) => Err(Refusal::Forbidden {
                who,
                reason: "a sensor's routes take that sensor's own token only",
            }),
            None if own.is_none() => Err(Refusal::Forbidden {
                who: "bearer".to_string(),
                reason: "no token configured for this sensor",
            }),
            None => Err(Refusal::Unauthenticated {
                presented: Some("bearer".to_string()),
            }),
        }
    }
}

/// A fresh random token (32 bytes, hex), for the demo.
pub fn random_token() -> Result<String, ring::error::Unspecified> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

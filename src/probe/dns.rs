//! Reverse DNS: the PTR name of a target, one fact about a host.
//!
//! Input: a [`Target`]; the nameservers and timeout come from the scan settings. Output: the
//! name (without its trailing dot), `None` when the name servers say there is none (NXDOMAIN
//! or an empty answer), or a [`Failure`] when they could not say (timeout, REFUSED, SERVFAIL).
//! Each lookup makes one attempt per name server, all servers asked at once, under a deadline.

use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverOpts};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::xfer::{DnsHandle, FirstAnswer};
use hickory_resolver::proto::op::{DnsRequestOptions, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::{NameServerPool, PoolContext, TlsConfig};

use crate::config::DnsSettings;
use crate::probe::{Failure, Reason};
use crate::scope::Target;

/// The resolver could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot read the system resolver configuration (/etc/resolv.conf)")]
    SystemConfig(#[source] NetError),
    #[error("cannot set up the DNS client")]
    Setup(#[source] NetError),
}

/// Asks name servers for PTR records.
///
/// Built on hickory's name server pool rather than its `Resolver`: the resolver answers
/// `localhost` for every 127/8 and ::1 address without asking anyone (RFC 6761), which would
/// hide what the configured servers say about the loopback lab. No cache: a scan asks about
/// each address once.
#[derive(Clone)]
pub struct ReverseDns {
    pool: NameServerPool<TokioRuntimeProvider>,
    /// Hard bound on one lookup, above the per-query timeout of the pool.
    deadline: Duration,
}

impl std::fmt::Debug for ReverseDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReverseDns")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl ReverseDns {
    /// Empty `settings.nameservers`: the name servers of the system configuration
    /// (/etc/resolv.conf). Otherwise exactly those servers, over UDP, with TCP when an answer
    /// comes back truncated. `timeout` bounds each query; one attempt, every server at once.
    pub fn new(settings: &DnsSettings, timeout: Duration) -> Result<ReverseDns, DnsError> {
        let servers: Vec<NameServerConfig> = if settings.nameservers.is_empty() {
            let (config, _options) = hickory_resolver::system_conf::read_system_conf()
                .map_err(DnsError::SystemConfig)?;
            config.name_servers().to_vec()
        } else {
            settings
                .nameservers
                .iter()
                .map(|addr| {
                    let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                    for connection in &mut server.connections {
                        connection.port = addr.port();
                    }
                    server
                })
                .collect()
        };
        let mut options = ResolverOpts::default();
        options.timeout = timeout;
        options.attempts = 1;
        // Ask every server at once, so one lookup costs one timeout, not one per server.
        options.num_concurrent_reqs = servers.len().max(1);
        let tls = TlsConfig::new().map_err(DnsError::Setup)?;
        let context = Arc::new(PoolContext::new(options, tls));
        let pool = NameServerPool::from_config(servers, context, TokioRuntimeProvider::default());
        Ok(ReverseDns {
            pool,
            // Room for a TCP retry after a truncated UDP answer.
            deadline: timeout.saturating_mul(2) + Duration::from_millis(100),
        })
    }

    /// The PTR name of `target` without its trailing dot; `Ok(None)` when there is none.
    pub async fn ptr(&self, target: &Target) -> Result<Option<String>, Failure> {
        let query = Query::query(Name::from(target.ip()), RecordType::PTR);
        let lookup = self
            .pool
            .lookup(query, DnsRequestOptions::default())
            .first_answer();
        match tokio::time::timeout(self.deadline, lookup).await {
            Err(_elapsed) => Err(Failure::timeout()),
            Ok(Ok(response)) => Ok(response
                .answers
                .iter()
                .find_map(|record| match &record.data {
                    RData::PTR(ptr) => Some(without_root(&ptr.0.to_string())),
                    _ => None,
                })),
            Ok(Err(error)) if error.is_no_records_found() => Ok(None),
            Ok(Err(error)) => Err(failure(&error)),
        }
    }
}

fn without_root(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_owned()
}

fn failure(error: &NetError) -> Failure {
    use hickory_resolver::net::DnsError as Dns;
    let reason = match error {
        NetError::Timeout => Reason::Timeout,
        NetError::Io(io) => Reason::from_io(io),
        NetError::Dns(Dns::ResponseCode(ResponseCode::Refused)) => Reason::Refused,
        NetError::Dns(Dns::ResponseCode(ResponseCode::FormErr | ResponseCode::NotImp)) => {
            Reason::Protocol
        }
        NetError::Proto(_) => Reason::Protocol,
        NetError::NoConnections => Reason::Unreachable,
        _ => Reason::Other,
    };
    Failure::new(reason, error.to_string())
}

//! Reverse DNS: the PTR name of a target, one fact about a host.
//!
//! Input: a [`Target`]; the nameservers and timeout come from the scan settings. Output: the
//! name (without its trailing dot), `None` when the name servers say there is none (NXDOMAIN
//! or an empty answer), or a [`Failure`] when they could not say (timeout, REFUSED, SERVFAIL).
//! Each lookup makes one attempt per name server, all servers asked at once, under a deadline.
//! Answers are cached by the resolver for their TTL.

use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData};

use crate::config::DnsSettings;
use crate::probe::{Failure, Reason};
use crate::scope::Target;

/// The resolver could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot read the system resolver configuration (/etc/resolv.conf)")]
    SystemConfig(#[source] NetError),
    #[error("cannot build the DNS resolver")]
    Build(#[source] NetError),
}

/// Looks up PTR records, through the system's name servers or the configured ones.
#[derive(Debug, Clone)]
pub struct ReverseDns {
    resolver: TokioResolver,
    /// Hard bound on one lookup, above the resolver's own per-query timeout.
    deadline: Duration,
}

impl ReverseDns {
    /// Empty `settings.nameservers`: the system configuration (/etc/resolv.conf, and the hosts
    /// file as the system resolver would use it). Otherwise exactly those servers over UDP, with
    /// TCP when an answer comes back truncated. `timeout` bounds each query.
    pub fn new(settings: &DnsSettings, timeout: Duration) -> Result<ReverseDns, DnsError> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if settings.nameservers.is_empty() {
            TokioResolver::builder(provider).map_err(DnsError::SystemConfig)?
        } else {
            let servers = settings
                .nameservers
                .iter()
                .map(|addr| {
                    let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                    for connection in &mut server.connections {
                        connection.port = addr.port();
                    }
                    server
                })
                .collect();
            let mut builder = TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                provider,
            );
            // Operators who name servers want those servers' answers, not /etc/hosts.
            builder.options_mut().use_hosts_file = ResolveHosts::Never;
            builder
        };
        let servers = settings.nameservers.len();
        let options: &mut ResolverOpts = builder.options_mut();
        options.timeout = timeout;
        options.attempts = 1;
        // Ask every server at once, so one lookup costs one timeout, not one per server.
        options.num_concurrent_reqs = servers.max(options.num_concurrent_reqs).max(1);
        let resolver = builder.build().map_err(DnsError::Build)?;
        Ok(ReverseDns {
            resolver,
            // Room for a TCP retry after a truncated UDP answer.
            deadline: timeout.saturating_mul(2) + Duration::from_millis(100),
        })
    }

    /// The PTR name of `target` without its trailing dot; `Ok(None)` when there is none.
    pub async fn ptr(&self, target: &Target) -> Result<Option<String>, Failure> {
        let name = Name::from(target.ip());
        let lookup = tokio::time::timeout(self.deadline, self.resolver.reverse_lookup(name)).await;
        match lookup {
            Err(_elapsed) => Err(Failure::timeout()),
            Ok(Ok(lookup)) => Ok(lookup
                .answers()
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

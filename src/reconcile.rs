//! Reconciliation: places each observed host in the bureau's registers.
//!
//! Pure and synchronous: takes the validated [`Config`] and observations, returns placements.
//! No I/O, no clock (the date is passed in). A host's department is its segment's owner when the
//! segment is departmental, else the department of an approval or project that covers it.

use std::net::IpAddr;

use chrono::NaiveDate;

use crate::config::{Approval, Asset, Config, Project};

/// Where a host stands in the registers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    pub department: Option<String>,
    /// Approvals whose addresses cover the host (valid or not on `today`).
    pub approvals: Vec<String>,
    /// Projects that list the host among their assets (by address, or by its PTR name).
    pub projects: Vec<String>,
}

/// Approvals whose addresses cover `ip` within `segment`.
pub fn approvals_for<'a>(
    config: &'a Config,
    segment: &str,
    ip: IpAddr,
) -> impl Iterator<Item = &'a Approval> + 'a {
    let segment = segment.to_string();
    config
        .approvals
        .iter()
        .filter(move |a| a.segment == segment && a.addresses.iter().any(|n| n.contains(&ip)))
}

/// Projects that name `ip` (or `ptr`, case-insensitively) among their assets.
pub fn projects_for<'a>(
    config: &'a Config,
    ip: IpAddr,
    ptr: Option<&'a str>,
) -> impl Iterator<Item = &'a Project> + 'a {
    config.projects.iter().filter(move |p| {
        p.assets.iter().any(|asset| match asset {
            Asset::Address(net) => net.contains(&ip),
            Asset::Name(name) => ptr.is_some_and(|ptr| ptr.eq_ignore_ascii_case(name)),
        })
    })
}

/// Place one host. `_today` is taken now so validity checks can join without a signature change.
pub fn place(
    config: &Config,
    segment: &str,
    ip: IpAddr,
    ptr: Option<&str>,
    _today: NaiveDate,
) -> Placement {
    let approvals: Vec<&Approval> = approvals_for(config, segment, ip).collect();
    let projects: Vec<&Project> = projects_for(config, ip, ptr).collect();
    let department = config
        .segment(segment)
        .and_then(|s| s.department.clone())
        .or_else(|| approvals.first().map(|a| a.department.clone()))
        .or_else(|| projects.first().map(|p| p.department.clone()));
    Placement {
        department,
        approvals: approvals.iter().map(|a| a.id.clone()).collect(),
        projects: projects.iter().map(|p| p.id.clone()).collect(),
    }
}

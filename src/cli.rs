//! The command line of CONTRACT.md §1, parsed with clap. Dispatch lives in `app`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::rules::Severity;

/// Exit code for a bad config or bad usage (sysexits EX_USAGE).
pub const EXIT_USAGE: u8 = 64;
/// Exit code when `scan --fail-on` matched a finding.
pub const EXIT_FAIL_ON: u8 = 3;

#[derive(Debug, Parser)]
#[command(
    name = "netpatrol",
    version,
    about = "网络安全巡检: keeps a district's government network compliant and secure"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// `netpatrol probe` kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProbeWhat {
    /// TLS and TLCP posture: versions, every accepted suite, certificates.
    Tls,
    /// The web page: status, HSTS, login form, admin paths.
    Http,
    /// The greeting and the service check (unauthenticated access).
    Service,
}

/// `--fail-on` values: the rules' severities.
fn parse_severity(s: &str) -> Result<Severity, String> {
    Severity::parse(s).ok_or_else(|| format!("unknown severity {s:?} (one of {})", Severity::NAMES))
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the config, every register and rule file; report all problems.
    CheckConfig {
        #[arg(short, long, env = "NETPATROL_CONFIG")]
        config: PathBuf,
    },
    /// One complete pass over the named segments (all by default).
    Scan {
        #[arg(short, long, env = "NETPATROL_CONFIG")]
        config: PathBuf,
        /// Segment to scan; repeat for several. Default: every segment.
        #[arg(long = "segment", value_name = "NAME")]
        segments: Vec<String>,
        /// Probe kinds to run, comma-separated: icmp,tcp,dns,banner,tls,http. Default: all.
        #[arg(long, value_name = "LIST")]
        probes: Option<String>,
        /// Report format. Default: a table on a terminal, JSON otherwise.
        #[arg(long, value_enum)]
        format: Option<Format>,
        /// Write the report to this file instead of standard output.
        #[arg(long, value_name = "PATH")]
        output: Option<PathBuf>,
        /// Exit 3 when a finding of this severity or higher is open (waived ones do not count).
        #[arg(long, value_name = "SEVERITY", value_parser = parse_severity)]
        fail_on: Option<Severity>,
    },
    /// Probe one endpoint and show its facts and the exchanges that produced them.
    Probe {
        /// tls, http or service.
        #[arg(value_enum)]
        what: ProbeWhat,
        /// The endpoint, IP:PORT (IPv6 as [ADDR]:PORT).
        #[arg(value_name = "IP:PORT")]
        endpoint: std::net::SocketAddr,
        /// The config: its segments must declare the address (without it, only loopback
        /// addresses may be probed), and its trust anchors and timeouts are used.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Host name to send (SNI, Host header) and to match the certificate against.
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Output format. Default: readable text on a terminal, JSON otherwise.
        #[arg(long, value_enum)]
        format: Option<Format>,
        /// Language of the text output: zh or en. Default: the config's bulletin.lang, else zh.
        #[arg(long, value_name = "LANG")]
        lang: Option<String>,
    },
    /// Run scheduled scans and bulletins and serve HTTP (not built yet).
    Daemon {
        #[arg(short, long, env = "NETPATROL_CONFIG")]
        config: PathBuf,
    },
    /// Build the network security bulletin (网络安全通报) of a period from the store.
    Bulletin {
        #[arg(short, long, env = "NETPATROL_CONFIG")]
        config: PathBuf,
        /// The month to report on. Default: the previous calendar month.
        #[arg(long, value_name = "YYYY-MM", conflicts_with_all = ["from", "to"])]
        period: Option<String>,
        /// First day of a custom period (with --to).
        #[arg(long, value_name = "DATE", requires = "to")]
        from: Option<String>,
        /// Last day of a custom period, included (with --from).
        #[arg(long, value_name = "DATE", requires = "from")]
        to: Option<String>,
        /// Write the files here. Default: bulletin.out_dir.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// zh or en. Default: bulletin.lang.
        #[arg(long, value_name = "LANG")]
        lang: Option<String>,
        /// Mail the bulletin and the departments' notices (through the outbox).
        #[arg(long)]
        send: bool,
        /// With --send: queue the period's mail again even if it was queued or sent before.
        #[arg(long, requires = "send")]
        force: bool,
    },
    /// List mail not yet sent; --flush tries every queued message now.
    Outbox {
        #[arg(short, long, env = "NETPATROL_CONFIG")]
        config: Option<PathBuf>,
        /// Send the queued mail now.
        #[arg(long)]
        flush: bool,
    },
    /// Start a simulated district network on loopback and scan it.
    Demo {
        /// Exit after the first scan.
        #[arg(long)]
        once: bool,
        /// Where the demo writes its store (and, later, its bulletin).
        #[arg(long, default_value = "demo-out")]
        out: PathBuf,
    },
}

//! The command line of CONTRACT.md §1, parsed with clap. Dispatch lives in `app`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::rules::Severity;

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
    /// Run scheduled scans and bulletins and serve HTTP (not built yet).
    Daemon {
        #[arg(short, long, env = "NETPATROL_CONFIG")]
        config: PathBuf,
    },
    /// Build the network security bulletin (not built yet).
    Bulletin {
        #[arg(short, long, env = "NETPATROL_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        period: Option<String>,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        lang: Option<String>,
        #[arg(long)]
        send: bool,
    },
    /// List queued mail; --flush sends what is due (not built yet).
    Outbox {
        #[arg(short, long, env = "NETPATROL_CONFIG")]
        config: Option<PathBuf>,
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

//! The command line (documented in docs/cli.md and docs/cli.zh.md), parsed with clap. Dispatch
//! lives in `app`. Each command's first help line is quoted by both pages; `tests/it/docs.rs`
//! checks that the pages and this file list the same commands and options.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::severity::Severity;

/// Exit code for a bad config or bad usage (sysexits EX_USAGE).
pub const EXIT_USAGE: u8 = 64;
/// Exit code when `scan --fail-on` matched a finding.
pub const EXIT_FAIL_ON: u8 = 3;

#[derive(Debug, Parser)]
#[command(
    name = "netpatrol",
    version,
    about = "网络安全巡检：政务网络合规与安全巡检 / keeps a district's government network compliant and secure",
    after_help = "文档 / docs: docs/README.zh.md（中文）, docs/README.md (English). 退出码 / exit codes: 0 成功 / ok, 1 运行失败 / runtime failure, 3 --fail-on 命中 / matched, 64 配置或用法错误 / bad config or usage."
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
    /// 检查配置、登记表与规则，一次列出全部问题 / Check config, registers and rules; list every problem
    CheckConfig {
        /// 配置文件 / The config file (YAML).
        #[arg(short, long, env = "NETPATROL_CONFIG")]
        config: PathBuf,
    },
    /// 巡检一次：探测、比对登记表、按规则生成问题并入库 / One scan: probe, reconcile, judge, record
    Scan {
        /// 配置文件 / The config file (YAML).
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
    /// 探测单个服务，显示事实及交互过程 / Probe one endpoint: its facts and the exchanges behind them
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
    /// 采集节点：按中心分配巡检网段，把观测结果发往中心 / Sensor: scan what the hub assigns, send the observations to it
    Sensor {
        /// 配置文件 / The config file (YAML).
        #[arg(short, long, env = "NETPATROL_CONFIG")]
        config: PathBuf,
    },
    /// 守护进程：定时巡检与通报，提供 HTTP 接口 / Daemon: scheduled scans and bulletins, HTTP API
    Daemon {
        /// 配置文件 / The config file (YAML).
        #[arg(short, long, env = "NETPATROL_CONFIG")]
        config: PathBuf,
    },
    /// 生成一期网络安全通报（可发送邮件）/ Build a period's security bulletin (and mail it)
    Bulletin {
        /// 配置文件 / The config file (YAML).
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
    /// 查看待发邮件；--flush 立即重试 / List unsent mail; --flush retries it now
    Outbox {
        /// 配置文件 / The config file (YAML).
        #[arg(short, long, env = "NETPATROL_CONFIG")]
        config: Option<PathBuf>,
        /// Send the queued mail now.
        #[arg(long)]
        flush: bool,
    },
    /// 查看接口操作审计记录（等级保护 2.0 安全审计）/ List the API actions the daemon recorded
    Audit {
        /// 配置文件 / The config file (YAML).
        #[arg(short, long, env = "NETPATROL_CONFIG")]
        config: Option<PathBuf>,
        /// From this day (YYYY-MM-DD, organisation timezone) or instant (RFC 3339).
        #[arg(long, value_name = "DATE")]
        since: Option<String>,
        /// Table headers: zh (default) or en.
        #[arg(long, value_name = "LANG")]
        lang: Option<String>,
    },
    /// 演示：在本机回环地址上模拟一个区的网络并巡检 / Demo: scan a simulated district on loopback
    Demo {
        /// Exit after the first scan.
        #[arg(long)]
        once: bool,
        /// Where the demo writes its store, report and bulletin.
        #[arg(long, default_value = "demo-out")]
        out: PathBuf,
    },
}

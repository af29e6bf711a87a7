//! The raw layer: serde structs that mirror the YAML exactly.
//!
//! Every field documents its default. Unknown keys are not refused here but by `keys.rs`, which
//! walks the whole file first and reports every unknown key at once (serde's
//! `deny_unknown_fields` would stop at the first); serde then ignores them. Values that validation
//! must point at are kept as `Spanned<String>` (the YAML position comes with them) and are parsed
//! in `validate.rs`, so one bad value becomes one problem instead of stopping the file. The same
//! item structs are filled from CSV rows by `registers.rs`, where positions are unknown (line 0)
//! and the row number is carried by the item's origin instead.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, IgnoredAny};
use serde_saphyr::Spanned;

/// A string value with its position.
pub type Text = Spanned<String>;

/// The whole file.
#[derive(Debug, Deserialize)]
pub struct ConfigFile {
    /// Default: name "netpatrol", timezone Asia/Shanghai.
    #[serde(default)]
    pub organisation: Option<OrganisationConfig>,
    /// Default: `netpatrol.db` beside the config file.
    #[serde(default)]
    pub store: Option<StoreConfig>,
    /// Default: no extra trust anchors.
    #[serde(default)]
    pub trust: Option<TrustConfig>,
    /// Default: every scan setting at its own default.
    #[serde(default)]
    pub scan: Option<ScanConfig>,
    /// Default: no departments.
    #[serde(default)]
    pub departments: Option<Register<DepartmentConfig>>,
    /// Required: the only addresses netpatrol will ever probe.
    #[serde(default)]
    pub segments: Option<Register<SegmentConfig>>,
    /// Default: no approvals.
    #[serde(default)]
    pub approvals: Option<Register<ApprovalConfig>>,
    /// Default: no projects.
    #[serde(default)]
    pub projects: Option<Register<ProjectConfig>>,
    /// Default: no HTTP server, no scheduled scans.
    #[serde(default)]
    pub daemon: Option<DaemonConfig>,
    /// Default: monthly bulletin in Chinese, written to `bulletins` beside the config.
    #[serde(default)]
    pub bulletin: Option<BulletinConfig>,
    /// Default: absent, no mail is sent.
    #[serde(default)]
    pub smtp: Option<SmtpConfig>,
    /// Default: the built-in rule pack only, every rule enabled at its own severity.
    #[serde(default)]
    pub rules: Option<RulesConfig>,
    /// Default: every compliance setting at its own default.
    #[serde(default)]
    pub compliance: Option<ComplianceConfig>,
    /// Waivers; inline or `{file: PATH}` (YAML or CSV) like the registers. Default: none.
    #[serde(default)]
    pub exceptions: Option<Register<WaiverConfig>>,
    /// On a hub (`netpatrol daemon`): the sensors that scan some segments for it, each
    /// segment at most one sensor's. Default: none (the daemon scans every segment itself).
    #[serde(default)]
    pub sensors: Vec<SensorConfig>,
    /// On a sensor (`netpatrol sensor`): the hub it takes its assignment from and sends its
    /// observations to. Default: none (required by `netpatrol sensor`).
    #[serde(default)]
    pub hub: Option<HubConfig>,
}

#[derive(Debug, Deserialize)]
pub struct SensorConfig {
    /// Required: the sensor's id (letters, digits, `-`, `_`), as its own `hub.sensor` says.
    #[serde(default)]
    pub id: Option<Text>,
    /// Required: the segments (by name) this sensor scans; the hub's own scheduled scans
    /// skip them. A segment belongs to at most one sensor.
    #[serde(default)]
    pub segments: Vec<Text>,
    /// Environment variable holding this sensor's bearer token (or `<VAR>_FILE` naming a
    /// file); default `NETPATROL_SENSOR_<ID>` (the id upper-cased, `-` as `_`).
    #[serde(default)]
    pub token_env: Option<Text>,
}

#[derive(Debug, Deserialize)]
pub struct HubConfig {
    /// Required: the hub's base URL, `https://HOST:PORT` (`http://` only for a loopback
    /// host).
    #[serde(default)]
    pub url: Option<Text>,
    /// Required: this sensor's id, as the hub's `sensors[].id` names it.
    #[serde(default)]
    pub sensor: Option<Text>,
    /// Environment variable holding this sensor's bearer token (or `<VAR>_FILE` naming a
    /// file); default `NETPATROL_SENSOR_TOKEN`. It must be set.
    #[serde(default)]
    pub token_env: Option<Text>,
    /// PEM trust anchors for the hub's certificate, relative to the config's folder;
    /// default none (the system roots).
    #[serde(default)]
    pub ca_file: Option<Text>,
    /// PEM client certificate (chain) for a hub that asks for one (mTLS), relative to the
    /// config's folder; default none. Only with `key_file`.
    #[serde(default)]
    pub cert_file: Option<Text>,
    /// PEM private key of `cert_file`, relative to the config's folder; default none.
    #[serde(default)]
    pub key_file: Option<Text>,
    /// Seconds between two fetches of the assignment, 1 to 86400; default 60.
    #[serde(default)]
    pub poll_seconds: Option<Spanned<u64>>,
    /// Longest wait, in seconds, between two attempts to reach an unreachable hub (the wait
    /// doubles from 1 s up to this), 1 to 3600; default 60.
    #[serde(default)]
    pub retry_max_seconds: Option<Spanned<u64>>,
    /// Hours an unsent batch is kept in the local store before it is dropped, at least 72;
    /// default 168.
    #[serde(default)]
    pub keep_hours: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
pub struct OrganisationConfig {
    /// Default "netpatrol".
    #[serde(default)]
    pub name: Option<String>,
    /// IANA name; default "Asia/Shanghai".
    #[serde(default)]
    pub timezone: Option<Text>,
}

#[derive(Debug, Deserialize)]
pub struct StoreConfig {
    /// SQLite file; default `netpatrol.db` beside the config; relative to the config's folder.
    /// Not together with `url`.
    #[serde(default)]
    pub path: Option<Text>,
    /// PostgreSQL instead of SQLite: `postgres://USER@HOST:PORT/DATABASE` (the database must
    /// exist; no password in it: see `password_env`); default none (SQLite). Not together
    /// with `path`.
    #[serde(default)]
    pub url: Option<Text>,
    /// Environment variable holding the PostgreSQL password; default none (no password, or
    /// what `~/.pgpass` gives). Only with `url`.
    #[serde(default)]
    pub password_env: Option<Text>,
}

#[derive(Debug, Deserialize)]
pub struct TrustConfig {
    /// Extra PEM trust anchors besides the system roots, relative to the config's folder;
    /// default none.
    #[serde(default)]
    pub ca_files: Vec<Text>,
}

#[derive(Debug, Deserialize)]
pub struct ScanConfig {
    /// ICMP echo as one liveness signal; default true.
    #[serde(default)]
    pub icmp: Option<bool>,
    /// One string or a list of ports, "A-B" ranges and named sets; default the `default` set.
    #[serde(default)]
    pub ports: Option<PortList>,
    /// New connection attempts per second, whole process, 0 = unlimited, at most 1000000;
    /// default 2000.
    #[serde(default)]
    pub rate: Option<Spanned<u64>>,
    /// Probes in flight, whole process, 1 to 65536; default 256.
    #[serde(default)]
    pub concurrency: Option<Spanned<u64>>,
    /// Per connection / handshake step, 1 to 60000; default 1500.
    #[serde(default)]
    pub timeout_ms: Option<Spanned<u64>>,
    /// Extra attempts for a port that stayed silent, 0 to 10; default 1.
    #[serde(default)]
    pub retries: Option<Spanned<u64>>,
    /// How long to wait for a service's greeting, 1 to 60000; default 1000.
    #[serde(default)]
    pub banner_timeout_ms: Option<Spanned<u64>>,
    /// Reverse DNS; default enabled with the system resolver.
    #[serde(default)]
    pub dns: Option<DnsConfig>,
}

#[derive(Debug, Deserialize)]
pub struct DnsConfig {
    /// Look up PTR records of live hosts; default true.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// "ADDR" (port 53) or "ADDR:PORT"; default empty = /etc/resolv.conf.
    #[serde(default)]
    pub nameservers: Vec<Text>,
}

/// `scan.ports`: one item (string or integer) or a list of items. Each item is kept as text
/// with its position; `ports.rs` parses it.
#[derive(Debug)]
pub struct PortList(pub Vec<Text>);

impl<'de> Deserialize<'de> for PortList {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        enum Inner {
            Many(Vec<Text>),
            One(String),
        }
        // Hand-written rather than `#[serde(untagged)]`, which buffers the input and loses the
        // positions of the list items.
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Inner;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a port, a range, a named set, or a list of them")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Inner, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Text>()? {
                    items.push(item);
                }
                Ok(Inner::Many(items))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Inner, E> {
                Ok(Inner::One(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Inner, E> {
                Ok(Inner::One(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Inner, E> {
                Ok(Inner::One(v.to_string()))
            }
        }
        impl<'de> Deserialize<'de> for Inner {
            fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(V)
            }
        }
        let whole = Spanned::<Inner>::deserialize(d)?;
        Ok(PortList(match whole.value {
            Inner::Many(items) => items,
            Inner::One(item) => vec![Spanned::new(item, whole.referenced, whole.defined)],
        }))
    }
}

/// A register list: written inline, or `{file: PATH}` naming a YAML list or a CSV file.
#[derive(Debug)]
pub enum Register<T> {
    Inline(Vec<T>),
    /// Path as written, relative to the config's folder.
    File(Text),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Register<T> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A hand-written visitor instead of `#[serde(untagged)]`: untagged buffers the input and
        // would lose every position inside the items.
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> de::Visitor<'de> for V<T> {
            type Value = Register<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list, or a map {file: PATH}")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Register<T>, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<T>()? {
                    items.push(item);
                }
                Ok(Register::Inline(items))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Register<T>, A::Error> {
                let mut file = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != "file" {
                        // Reported, with its position, by `keys.rs`.
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                    if file.is_some() {
                        return Err(de::Error::duplicate_field("file"));
                    }
                    file = Some(map.next_value::<Text>()?);
                }
                file.map(Register::File)
                    .ok_or_else(|| de::Error::missing_field("file"))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

#[derive(Debug, Deserialize)]
pub struct DepartmentConfig {
    /// Required, unique: the short id other registers refer to.
    pub id: Text,
    /// Required: the department's full name.
    pub name: String,
    /// Where its rectification notices go; default none.
    #[serde(default)]
    pub emails: Vec<Text>,
    /// Its leadership: copied (Cc) on a notice that carries items overdue by
    /// `bulletin.escalate_after_days` or more; default none (no copy).
    #[serde(default)]
    pub leader_emails: Vec<Text>,
}

#[derive(Debug, Deserialize)]
pub struct SegmentConfig {
    /// Required, unique.
    pub name: Text,
    /// Required: extranet | metro | departmental | internet | other.
    pub network: Text,
    /// At least one CIDR or bare address; default none (an error).
    #[serde(default)]
    pub cidrs: Vec<Text>,
    /// Addresses or networks inside `cidrs` never to probe; default none.
    #[serde(default)]
    pub exclude: Vec<Text>,
    /// Owning department id; default none, required for departmental segments.
    #[serde(default)]
    pub department: Option<Text>,
    /// Departmental only: YYYY-MM-DD by which it must be merged; default none.
    #[serde(default)]
    pub consolidate_by: Option<Text>,
}

#[derive(Debug, Deserialize)]
pub struct ApprovalConfig {
    /// Required, unique: the approval number.
    pub id: Text,
    /// Required: department id.
    pub department: Text,
    /// Required: segment name.
    pub segment: Text,
    /// Approved addresses or networks inside the segment; default none.
    #[serde(default)]
    pub addresses: Vec<Text>,
    /// Ports, ranges or named sets approved to be reachable; default absent = any.
    #[serde(default)]
    pub ports: Option<Vec<Text>>,
    /// Required: YYYY-MM-DD.
    pub approved_on: Text,
    /// YYYY-MM-DD; default never expires.
    #[serde(default)]
    pub expires_on: Option<Text>,
}

#[derive(Debug, Deserialize)]
pub struct ProjectConfig {
    /// Required, unique.
    pub id: Text,
    /// Required.
    pub name: String,
    /// Required: department id.
    pub department: Text,
    /// Required: planned | building | trial | accepted | in_use | retired.
    pub stage: Text,
    /// YYYY-MM-DD; default none, required once accepted.
    #[serde(default)]
    pub accepted_on: Option<Text>,
    /// Addresses or host names; default none.
    #[serde(default)]
    pub assets: Vec<Text>,
    /// 等级保护 filing and assessment; default none.
    #[serde(default)]
    pub mlps: Option<MlpsConfig>,
    /// 密码应用安全性评估; default none.
    #[serde(default)]
    pub crypto: Option<CryptoConfig>,
}

#[derive(Debug, Deserialize)]
pub struct MlpsConfig {
    /// Required: 1 to 5.
    pub level: Text,
    /// Default none.
    #[serde(default)]
    pub filing_no: Option<String>,
    /// YYYY-MM-DD; default none (never assessed).
    #[serde(default)]
    pub assessed_on: Option<Text>,
    /// Free text such as `pass`, `basic_pass`; default none.
    #[serde(default)]
    pub conclusion: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct CryptoConfig {
    /// YYYY-MM-DD; default none (never assessed).
    #[serde(default)]
    pub assessed_on: Option<Text>,
    /// Free text such as `pass`; default none.
    #[serde(default)]
    pub conclusion: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct DaemonConfig {
    /// ADDR:PORT for /metrics, /healthz and /api/v1; default none = no HTTP server.
    #[serde(default)]
    pub listen: Option<Text>,
    /// Environment variable holding the API token; default NETPATROL_API_TOKEN.
    #[serde(default)]
    pub api_token_env: Option<String>,
    /// Never accepted: secrets are not read from the YAML (a specific message says so).
    #[serde(default)]
    pub api_token: Option<Spanned<IgnoredAny>>,
    /// Scheduled scans; default none.
    #[serde(default)]
    pub scans: Vec<ScheduledScanConfig>,
    /// Environment variable holding the read-only token (GET routes); default
    /// NETPATROL_READ_TOKEN.
    #[serde(default)]
    pub read_token_env: Option<String>,
    /// Web configuration file (Prometheus exporter-toolkit format: TLS, basic auth), relative
    /// to the config file; default none (plain HTTP, no basic auth).
    #[serde(default)]
    pub web_config: Option<Text>,
    /// Scans accepted by the API and not yet finished, at most; more answer 429. Default 8.
    #[serde(default)]
    pub max_queued_scans: Option<u32>,
    /// Environment variable holding the key that signs departments' rectification links (at
    /// least 32 bytes); default NETPATROL_LINK_KEY; unset = a random key kept in the store.
    #[serde(default)]
    pub link_key_env: Option<String>,
    /// The URL departments reach the daemon at (`https://...`), put in each notice as the
    /// base of its rectification link; default none (notices carry no link).
    #[serde(default)]
    pub public_url: Option<Text>,
}

#[derive(Debug, Deserialize)]
pub struct ScheduledScanConfig {
    /// Required: 5 or 6 fields, organisation timezone.
    pub cron: Text,
    /// Segment names; default empty = all segments.
    #[serde(default)]
    pub segments: Vec<Text>,
}

#[derive(Debug, Deserialize)]
pub struct BulletinConfig {
    /// Default "0 9 1 * *": 09:00 on the 1st of each month.
    #[serde(default)]
    pub cron: Option<Text>,
    /// zh | en; default zh.
    #[serde(default)]
    pub lang: Option<Text>,
    /// Default `bulletins` beside the config; relative to the config's folder.
    #[serde(default)]
    pub out_dir: Option<String>,
    /// Who receives the whole bulletin; default none.
    #[serde(default)]
    pub recipients: Vec<Text>,
    /// Mail each department its own notice; default true.
    #[serde(default)]
    pub notify_departments: Option<bool>,
    /// Items past their due date by this many days or more are escalated: listed in the
    /// bulletin's 逾期未整改 section and copied (Cc) to the department's `leader_emails` in its
    /// next notice; default 30; 0 = no escalation.
    #[serde(default)]
    pub escalate_after_days: Option<u32>,
    /// Folder whose files replace the built-in bulletin templates of the same name
    /// (`bulletin.html`, `bulletin.txt`, `bulletin.md`, `notice.html`, `notice.txt`,
    /// `style.css`, and the daemon's pages and mail `rectify.html`, `operator.html`,
    /// `decision.html`, `decision.txt`); relative to the config's folder. Default none: the
    /// built-in templates.
    #[serde(default)]
    pub templates_dir: Option<Text>,
}

#[derive(Debug, Deserialize)]
pub struct SmtpConfig {
    /// Required.
    pub host: Text,
    /// Default 587 for starttls, 465 for tls, 25 for none.
    #[serde(default)]
    pub port: Option<Spanned<u64>>,
    /// starttls | tls | none; default starttls.
    #[serde(default)]
    pub security: Option<Text>,
    /// Default none (no authentication).
    #[serde(default)]
    pub username: Option<String>,
    /// Environment variable holding the password; default none.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Never accepted: secrets are not read from the YAML (a specific message says so).
    #[serde(default)]
    pub password: Option<Spanned<IgnoredAny>>,
    /// Required: the From header, e.g. "网络安全巡检 <netpatrol@example.gov.cn>".
    pub from: Text,
}

/// A map kept as written: its entries in order, each key with its position (a derived map
/// would lose both). serde-saphyr itself refuses a key written twice.
#[derive(Debug)]
pub struct Pairs<K, V>(pub Vec<(K, V)>);

impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for Pairs<K, V> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<K, V>(PhantomData<(K, V)>);
        impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> de::Visitor<'de> for Visit<K, V> {
            type Value = Pairs<K, V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Pairs<K, V>, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<K, V>()? {
                    entries.push(entry);
                }
                Ok(Pairs(entries))
            }
        }
        d.deserialize_map(Visit(PhantomData))
    }
}

#[derive(Debug, Deserialize)]
pub struct RulesConfig {
    /// Extra folders whose `*.yaml` rule files load after the built-in pack, relative to the
    /// config's folder; default none.
    #[serde(default)]
    pub dirs: Vec<Text>,
    /// Per rule id, `{severity: S, enabled: false}`; default none.
    #[serde(default)]
    pub overrides: Option<Pairs<Text, RuleOverrideConfig>>,
}

#[derive(Debug, Deserialize)]
pub struct RuleOverrideConfig {
    /// critical | high | medium | low | info; default the rule's own severity.
    #[serde(default)]
    pub severity: Option<Text>,
    /// Default true; false turns the rule off.
    #[serde(default)]
    pub enabled: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct ComplianceConfig {
    /// Days a valid approval's addresses may stay silent before `access.approval_unused`,
    /// at least 1; default 30.
    #[serde(default)]
    pub approval_unused_days: Option<Spanned<u64>>,
    /// MLPS level (1 to 5) to months between assessments (1 to 120), merged over the default
    /// {2: 24, 3: 12, 4: 6, 5: 6}; level 1 has no periodic assessment unless written here.
    #[serde(default)]
    pub mlps_interval_months: Option<Pairs<Spanned<u64>, Spanned<u64>>>,
    /// 密评 is required for projects in use at this MLPS level and above, 1 to 5; default 3.
    #[serde(default)]
    pub crypto_min_level: Option<Spanned<u64>>,
    /// Months between 密评 assessments, 1 to 120; default 12.
    #[serde(default)]
    pub crypto_interval_months: Option<Spanned<u64>>,
    /// A finding resolves after this many consecutive scans without it, at least 1; default 2.
    #[serde(default)]
    pub resolve_after_scans: Option<Spanned<u64>>,
    /// Share (0 to 1) of a scan's attempted probes that may fail locally (descriptors,
    /// buffers, local addresses, permissions) before the scan is degraded (it then opens
    /// findings and resolves none); default 0.01.
    #[serde(default)]
    pub max_local_failure_ratio: Option<Spanned<f64>>,
}

/// One waiver (例外): a finding the bureau accepted for a while, with who and why.
#[derive(Debug, Deserialize)]
pub struct WaiverConfig {
    /// Required: a rule id, or a prefix ending in `*` such as `exposure.*`.
    pub rule: Text,
    /// Address or CIDR the waiver is limited to; default any.
    #[serde(default)]
    pub ip: Option<Text>,
    /// Port the waiver is limited to, 1 to 65535; default any.
    #[serde(default)]
    pub port: Option<Text>,
    /// Segment name the waiver is limited to; default any.
    #[serde(default)]
    pub segment: Option<Text>,
    /// Department id the waiver is limited to; default any.
    #[serde(default)]
    pub department: Option<Text>,
    /// Project id the waiver is limited to; default any.
    #[serde(default)]
    pub project: Option<Text>,
    /// Required, non-empty: why the finding is accepted.
    #[serde(default)]
    pub reason: Option<Text>,
    /// Required, non-empty: who approved the waiver.
    #[serde(default)]
    pub approver: Option<Text>,
    /// Required: YYYY-MM-DD, the last day the waiver applies.
    #[serde(default)]
    pub expires_on: Option<Text>,
}

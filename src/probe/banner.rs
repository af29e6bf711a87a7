//! Banner: naming the service behind an open port. Pure functions, no I/O.
//!
//! Input: the port and the greeting bytes a service sent on its own after the connection was
//! made (`tcp` reads them), if any. Output: an [`Identity`] (service, and product and version
//! when the greeting tells them) and a [`printable`] form of the greeting for reports.
//! The greeting wins over the port: SSH on 2222 is `ssh`, and HTTP on 22 is `http`. Greeting
//! bytes come from the network: every parser here is bounds-checked and never panics.

use serde::Serialize;

/// What runs behind a port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// Service name, IANA-style (`ssh`, `http`, `mysql`, ...), `unknown` when neither the
    /// greeting nor the port tells.
    pub service: String,
    /// Software, when the greeting names it (`OpenSSH`, `nginx`, `MariaDB`).
    pub product: Option<String>,
    /// Software version, when the greeting gives it (`8.9p1`, `1.18.0`).
    pub version: Option<String>,
}

impl Identity {
    fn new(service: &str) -> Identity {
        Identity {
            service: service.to_owned(),
            product: None,
            version: None,
        }
    }

    fn with(service: &str, product: Option<String>, version: Option<String>) -> Identity {
        Identity {
            service: service.to_owned(),
            product,
            version,
        }
    }
}

/// Longest output of [`printable`], in characters.
pub const PRINTABLE_MAX: usize = 256;

/// Names the service from the greeting first (when there is one), the port second; `unknown`
/// when neither tells.
pub fn identify(port: u16, greeting: Option<&[u8]>) -> Identity {
    let by_port = service_for_port(port);
    if let Some(identity) = greeting
        .filter(|g| !g.is_empty())
        .and_then(|g| from_greeting(g, by_port))
    {
        return identity;
    }
    Identity::new(by_port.unwrap_or("unknown"))
}

/// The greeting as one line of text for reports: at most [`PRINTABLE_MAX`] characters,
/// control characters escaped (`\r`, `\n`, `\t`, `\xNN`), invalid UTF-8 replaced by U+FFFD,
/// line endings at the end dropped.
pub fn printable(greeting: &[u8]) -> String {
    let text = String::from_utf8_lossy(greeting);
    let text = text.trim_end_matches(['\r', '\n', '\0']);
    let mut out = String::new();
    let mut count = 0;
    // Where to cut, and leave room for the ellipsis, should the whole not fit.
    let mut cut = 0;
    for c in text.chars() {
        let piece = escape(c);
        let len = piece.chars().count();
        if count + len > PRINTABLE_MAX {
            out.truncate(cut);
            out.push('…');
            return out;
        }
        out.push_str(&piece);
        count += len;
        if count < PRINTABLE_MAX {
            cut = out.len();
        }
    }
    out
}

fn escape(c: char) -> String {
    match c {
        '\r' => "\\r".to_owned(),
        '\n' => "\\n".to_owned(),
        '\t' => "\\t".to_owned(),
        '\\' => "\\\\".to_owned(),
        c if (c as u32) < 0x100 && c.is_control() => format!("\\x{:02x}", c as u32),
        // Bidi overrides and other invisible format characters could disguise a report line.
        c if c.is_control() || is_invisible(c) => format!("\\u{{{:x}}}", c as u32),
        c => c.to_string(),
    }
}

fn is_invisible(c: char) -> bool {
    matches!(c as u32, 0x200b..=0x200f | 0x202a..=0x202e | 0x2060..=0x2069 | 0xfeff)
}

/// Well-known service name for a TCP port.
pub fn service_for_port(port: u16) -> Option<&'static str> {
    Some(match port {
        21 => "ftp",
        22 => "ssh",
        23 => "telnet",
        25 => "smtp",
        53 => "domain",
        80 | 8000 | 8008 | 8080 | 8081 | 8888 => "http",
        88 => "kerberos",
        110 => "pop3",
        111 => "rpcbind",
        135 => "msrpc",
        139 => "netbios-ssn",
        143 => "imap",
        389 => "ldap",
        443 | 8443 => "https",
        445 => "smb",
        465 => "smtps",
        587 => "submission",
        636 => "ldaps",
        873 => "rsync",
        993 => "imaps",
        995 => "pop3s",
        1080 => "socks",
        1433 => "mssql",
        1521 => "oracle-tns",
        1723 => "pptp",
        2049 => "nfs",
        2181 => "zookeeper",
        2375 | 2376 => "docker",
        2379 => "etcd",
        3306 => "mysql",
        3389 => "rdp",
        5432 => "postgresql",
        5601 => "kibana",
        5672 => "amqp",
        5900 | 5901 => "vnc",
        5985 | 5986 => "winrm",
        6379 => "redis",
        6443 => "kubernetes",
        7001 => "weblogic",
        8009 => "ajp",
        9092 => "kafka",
        9200 => "elasticsearch",
        10250 | 10255 => "kubelet",
        11211 => "memcached",
        27017 => "mongodb",
        _ => return None,
    })
}

/// Services whose protocol is HTTP: an HTTP answer on their port keeps the port's name.
const HTTP_BASED: &[&str] = &[
    "http",
    "docker",
    "elasticsearch",
    "etcd",
    "kibana",
    "kubelet",
    "kubernetes",
    "weblogic",
    "winrm",
];

fn from_greeting(g: &[u8], by_port: Option<&'static str>) -> Option<Identity> {
    if let Some(identity) = ssh(g).or_else(|| telnet(g)).or_else(|| mysql(g)) {
        return Some(identity);
    }
    let text = first_lines(g);
    rfb(&text)
        .or_else(|| http(&text, by_port))
        .or_else(|| ftp_or_smtp(&text, by_port))
        .or_else(|| pop3_imap(&text, by_port))
        .or_else(|| redis(&text, by_port))
}

/// The start of the greeting as text, enough for every text protocol here.
fn first_lines(g: &[u8]) -> String {
    String::from_utf8_lossy(&g[..g.len().min(1024)]).into_owned()
}

/// RFC 4253 §4.2: `SSH-protoversion-softwareversion SP comments CR LF`.
fn ssh(g: &[u8]) -> Option<Identity> {
    if !g.starts_with(b"SSH-") {
        return None;
    }
    let line = String::from_utf8_lossy(g);
    let line = line.lines().next().unwrap_or_default();
    // After "SSH-2.0-" (or "SSH-1.99-").
    let software = line[4..]
        .split_once('-')
        .map(|(_proto, rest)| rest)
        .unwrap_or_default();
    let software = software.split_whitespace().next().unwrap_or_default();
    if software.is_empty() {
        return Some(Identity::new("ssh"));
    }
    let (product, version) = match software.split_once('_') {
        // OpenSSH_8.9p1, dropbear_2022.83
        Some((p, v)) => (p, Some(v)),
        // Cisco-1.25, ROSSSH
        None => match software.rsplit_once('-') {
            Some((p, v)) if starts_with_digit(v) => (p, Some(v)),
            _ => (software, None),
        },
    };
    Some(Identity::with(
        "ssh",
        Some(product.to_owned()),
        version.filter(|v| !v.is_empty()).map(str::to_owned),
    ))
}

/// RFC 854: a telnet server usually opens with option negotiation, IAC (255) followed by
/// WILL, WONT, DO or DONT (251-254).
fn telnet(g: &[u8]) -> Option<Identity> {
    match g {
        [0xff, 251..=254, ..] => Some(Identity::new("telnet")),
        _ => None,
    }
}

/// MySQL/MariaDB: the server speaks first with a packet (3-byte little-endian length, sequence
/// 0) holding either the v10 handshake (protocol byte 10, NUL-terminated version) or an error
/// (0xff, e.g. "Host is not allowed to connect").
fn mysql(g: &[u8]) -> Option<Identity> {
    let [l0, l1, l2, 0, kind, rest @ ..] = g else {
        return None;
    };
    let len = usize::from(*l0) | usize::from(*l1) << 8 | usize::from(*l2) << 16;
    // A packet the greeting cannot even hold the header of is not MySQL.
    if !(2..=0x1_0000).contains(&len) {
        return None;
    }
    match kind {
        10 => {
            let end = rest.iter().position(|&b| b == 0)?;
            let raw = std::str::from_utf8(&rest[..end]).ok()?;
            if raw.is_empty() || !starts_with_digit(raw) || raw.chars().any(|c| c.is_control()) {
                return None;
            }
            // MariaDB 10 prefixes "5.5.5-" for the sake of old MySQL clients.
            let (product, version) = match raw.find("MariaDB") {
                Some(_) => {
                    let raw = raw.strip_prefix("5.5.5-").unwrap_or(raw);
                    ("MariaDB", dotted(raw))
                }
                None => ("MySQL", dotted(raw)),
            };
            Some(Identity::with(
                "mysql",
                Some(product.to_owned()),
                Some(version.unwrap_or(raw).to_owned()),
            ))
        }
        // ERR packet: 0xff, 2-byte error code, then (protocol 4.1) '#' and a 5-char SQL state,
        // then the message.
        0xff => match rest {
            [lo, hi, ..] if len >= 3 && (1000..5000).contains(&u16::from_le_bytes([*lo, *hi])) => {
                Some(Identity::new("mysql"))
            }
            _ => None,
        },
        _ => None,
    }
}

/// RFB (VNC): `RFB 003.008\n`.
fn rfb(text: &str) -> Option<Identity> {
    let rest = text.strip_prefix("RFB ")?;
    let version = rest.get(..7)?;
    let (major, minor) = version.split_once('.')?;
    let major: u16 = major.parse().ok()?;
    let minor: u16 = minor.parse().ok()?;
    Some(Identity::with(
        "vnc",
        Some("RFB".to_owned()),
        Some(format!("{major}.{minor}")),
    ))
}

/// An HTTP response; the `Server` header names the product.
fn http(text: &str, by_port: Option<&'static str>) -> Option<Identity> {
    if !(text.starts_with("HTTP/1.") || text.starts_with("HTTP/2")) {
        return None;
    }
    let service = by_port.filter(|s| HTTP_BASED.contains(s)).unwrap_or("http");
    let server = text
        .lines()
        .skip(1)
        .take_while(|l| !l.is_empty())
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("server")
                .then(|| value.trim())
        });
    let Some(server) = server.filter(|s| !s.is_empty()) else {
        return Some(Identity::new(service));
    };
    // "nginx/1.18.0 (Ubuntu)", "Apache/2.4.57 (Debian)", "Microsoft-IIS/10.0", "BWS".
    let first = server.split_whitespace().next().unwrap_or(server);
    let (product, version) = match first.split_once('/') {
        Some((p, v)) if !v.is_empty() => (p, Some(v.to_owned())),
        Some((p, _)) => (p, None),
        None => (first, None),
    };
    Some(Identity::with(service, Some(product.to_owned()), version))
}

/// Products named in FTP and SMTP greetings, matched case-insensitively; the version, when
/// present, is the token right after the name.
const FTP_PRODUCTS: &[&str] = &[
    "vsFTPd",
    "ProFTPD",
    "Pure-FTPd",
    "FileZilla Server",
    "Serv-U",
    "Microsoft FTP Service",
    "wu-ftpd",
];
const SMTP_PRODUCTS: &[&str] = &[
    "Postfix",
    "Exim",
    "Sendmail",
    "OpenSMTPD",
    "Microsoft ESMTP MAIL Service",
    "qmail",
    "Haraka",
    "Coremail",
];

/// FTP (RFC 959) and SMTP (RFC 5321) both greet with "220"; the text tells them apart.
fn ftp_or_smtp(text: &str, by_port: Option<&'static str>) -> Option<Identity> {
    let first = text.lines().next().unwrap_or_default();
    let code = first.get(..3)?;
    if !matches!(code, "220" | "120" | "421" | "554")
        || !matches!(first.as_bytes().get(3), Some(b' ' | b'-') | None)
    {
        return None;
    }
    let lower = text.to_ascii_lowercase();
    if let Some(identity) = product_in(text, &lower, FTP_PRODUCTS, "ftp") {
        return Some(identity);
    }
    if let Some(identity) = product_in(text, &lower, SMTP_PRODUCTS, "smtp") {
        return Some(identity);
    }
    if lower.contains("smtp") {
        return Some(Identity::new("smtp"));
    }
    if lower.contains("ftp") {
        return Some(Identity::new("ftp"));
    }
    match by_port {
        Some(s @ ("ftp" | "smtp" | "smtps" | "submission")) => Some(Identity::new(s)),
        _ => None,
    }
}

fn product_in(text: &str, lower: &str, products: &[&str], service: &str) -> Option<Identity> {
    products.iter().find_map(|p| {
        let at = lower.find(&p.to_ascii_lowercase())?;
        // `lower` is `text` with ASCII case changed only, so byte offsets agree.
        let after = text.get(at + p.len()..)?;
        Some(Identity::with(
            service,
            Some((*p).to_owned()),
            version_after(after),
        ))
    })
}

/// The version token right after a product name: "vsFTPd 3.0.3)", "Exim 4.96 Tue",
/// "Sendmail 8.15.2/8.15.2;".
fn version_after(after: &str) -> Option<String> {
    let after = after.strip_prefix([' ', '/', '_'])?;
    let token = after
        .split([' ', ')', ';', ',', '/', ']', '\r', '\n'])
        .next()?;
    (starts_with_digit(token)).then(|| token.to_owned())
}

/// POP3 greets with "+OK" (RFC 1939), IMAP with "* OK" or "* PREAUTH" (RFC 9051).
fn pop3_imap(text: &str, by_port: Option<&'static str>) -> Option<Identity> {
    let service = if text.starts_with("+OK") {
        match by_port {
            Some("pop3s") => "pop3s",
            _ => "pop3",
        }
    } else if text.starts_with("* OK") || text.starts_with("* PREAUTH") {
        match by_port {
            Some("imaps") => "imaps",
            _ => "imap",
        }
    } else {
        return None;
    };
    let lower = text.to_ascii_lowercase();
    let product = [
        "Dovecot",
        "Cyrus",
        "Courier",
        "Coremail",
        "Microsoft Exchange",
    ]
    .iter()
    .find(|p| lower.contains(&p.to_ascii_lowercase()))
    .map(|p| (*p).to_owned());
    Some(Identity::with(service, product, None))
}

/// Redis sends nothing first, but answers a stray line with a RESP error: "-NOAUTH
/// Authentication required.", "-DENIED Redis is running in protected mode", "-ERR ...".
/// POP3 also says "-ERR", so on its ports that stays POP3.
fn redis(text: &str, by_port: Option<&'static str>) -> Option<Identity> {
    if text.starts_with("-NOAUTH") || text.starts_with("-DENIED") || text.starts_with("-WRONGPASS")
    {
        return Some(Identity::new("redis"));
    }
    if text.starts_with("-ERR") {
        return Some(Identity::new(match by_port {
            Some(s @ ("pop3" | "pop3s")) => s,
            _ => "redis",
        }));
    }
    None
}

fn starts_with_digit(s: &str) -> bool {
    s.as_bytes().first().is_some_and(u8::is_ascii_digit)
}

/// The leading dotted number of a version string: "5.7.44-log" → "5.7.44".
fn dotted(s: &str) -> Option<&str> {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let v = s[..end].trim_end_matches('.');
    (!v.is_empty()).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(service: &str, product: Option<&str>, version: Option<&str>) -> Identity {
        Identity {
            service: service.into(),
            product: product.map(Into::into),
            version: version.map(Into::into),
        }
    }

    /// A MySQL protocol-10 handshake as a server sends it (header, version, then the rest of
    /// the packet: thread id, salt, capabilities, ...).
    fn mysql_handshake(version: &str) -> Vec<u8> {
        let mut body = vec![10u8];
        body.extend_from_slice(version.as_bytes());
        body.push(0);
        body.extend_from_slice(&[0x0b, 0, 0, 0]); // connection id
        body.extend_from_slice(b"5f[Y&d}z\0"); // auth-plugin-data part 1 + filler
        body.extend_from_slice(&[0xff, 0xf7, 0x2d, 0x02, 0x00, 0xff, 0x81, 0x15]);
        body.extend_from_slice(&[0; 10]);
        body.extend_from_slice(b"Kq7b%%V1*gn+\0mysql_native_password\0");
        let len = body.len() as u32;
        let mut packet = len.to_le_bytes()[..3].to_vec();
        packet.push(0);
        packet.extend_from_slice(&body);
        packet
    }

    #[test]
    fn ssh_openssh() {
        assert_eq!(
            identify(22, Some(b"SSH-2.0-OpenSSH_8.9p1 Ubuntu-3ubuntu0.6\r\n")),
            id("ssh", Some("OpenSSH"), Some("8.9p1"))
        );
        assert_eq!(
            identify(2222, Some(b"SSH-2.0-OpenSSH_8.9p1 Ubuntu-3\r\n")),
            id("ssh", Some("OpenSSH"), Some("8.9p1"))
        );
    }

    #[test]
    fn ssh_other_implementations() {
        assert_eq!(
            identify(22, Some(b"SSH-2.0-dropbear_2022.83\r\n")),
            id("ssh", Some("dropbear"), Some("2022.83"))
        );
        assert_eq!(
            identify(22, Some(b"SSH-1.99-Cisco-1.25\r\n")),
            id("ssh", Some("Cisco"), Some("1.25"))
        );
        assert_eq!(
            identify(22, Some(b"SSH-2.0-ROSSSH\r\n")),
            id("ssh", Some("ROSSSH"), None)
        );
        assert_eq!(identify(22, Some(b"SSH-2.0-")), id("ssh", None, None));
        assert_eq!(identify(22, Some(b"SSH-")), id("ssh", None, None));
    }

    #[test]
    fn ftp_vsftpd_and_proftpd() {
        assert_eq!(
            identify(21, Some(b"220 (vsFTPd 3.0.3)\r\n")),
            id("ftp", Some("vsFTPd"), Some("3.0.3"))
        );
        assert_eq!(
            identify(
                2121,
                Some(b"220 ProFTPD Server (Debian) [::ffff:127.0.0.1]\r\n")
            ),
            id("ftp", Some("ProFTPD"), None)
        );
        assert_eq!(
            identify(
                21,
                Some(b"220 ProFTPD 1.3.8 Server (ProFTPD Default Installation)\r\n")
            ),
            id("ftp", Some("ProFTPD"), Some("1.3.8"))
        );
        assert_eq!(
            identify(
                21,
                Some(b"220-FileZilla Server 1.7.0\r\n220 Please visit https://filezilla-project.org/\r\n")
            ),
            id("ftp", Some("FileZilla Server"), Some("1.7.0"))
        );
        assert_eq!(
            identify(21, Some(b"220 Microsoft FTP Service\r\n")),
            id("ftp", Some("Microsoft FTP Service"), None)
        );
    }

    #[test]
    fn smtp_is_told_from_ftp() {
        assert_eq!(
            identify(
                25,
                Some(b"220 mail.example.org ESMTP Postfix (Debian/GNU)\r\n")
            ),
            id("smtp", Some("Postfix"), None)
        );
        assert_eq!(
            identify(
                2525,
                Some(b"220 mx.example.org ESMTP Exim 4.96 Tue, 02 Jan 2024 10:00:00 +0800\r\n")
            ),
            id("smtp", Some("Exim"), Some("4.96"))
        );
        assert_eq!(
            identify(
                25,
                Some(b"220 host.example.org ESMTP Sendmail 8.15.2/8.15.2; Tue, 2 Jan 2024\r\n")
            ),
            id("smtp", Some("Sendmail"), Some("8.15.2"))
        );
        // On the FTP port, an SMTP greeting is still SMTP.
        assert_eq!(
            identify(21, Some(b"220 relay.example.org ESMTP ready\r\n")),
            id("smtp", None, None)
        );
        // A bare 220 leans on the port.
        assert_eq!(identify(25, Some(b"220 ready\r\n")), id("smtp", None, None));
        assert_eq!(identify(21, Some(b"220 ready\r\n")), id("ftp", None, None));
        assert_eq!(
            identify(4000, Some(b"220 ready\r\n")),
            id("unknown", None, None)
        );
    }

    #[test]
    fn pop3_and_imap() {
        assert_eq!(
            identify(110, Some(b"+OK Dovecot (Ubuntu) ready.\r\n")),
            id("pop3", Some("Dovecot"), None)
        );
        assert_eq!(
            identify(1110, Some(b"+OK POP3 server ready\r\n")),
            id("pop3", None, None)
        );
        assert_eq!(
            identify(
                143,
                Some(
                    b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS AUTH=PLAIN] Dovecot (Ubuntu) ready.\r\n"
                )
            ),
            id("imap", Some("Dovecot"), None)
        );
        assert_eq!(
            identify(993, Some(b"* OK IMAP ready\r\n")),
            id("imaps", None, None)
        );
        assert_eq!(
            identify(110, Some(b"-ERR too many connections\r\n")),
            id("pop3", None, None)
        );
    }

    #[test]
    fn mysql_and_mariadb_handshakes() {
        assert_eq!(
            identify(3306, Some(&mysql_handshake("5.7.44-log"))),
            id("mysql", Some("MySQL"), Some("5.7.44"))
        );
        assert_eq!(
            identify(13306, Some(&mysql_handshake("8.0.36-0ubuntu0.22.04.1"))),
            id("mysql", Some("MySQL"), Some("8.0.36"))
        );
        assert_eq!(
            identify(3306, Some(&mysql_handshake("10.11.6-MariaDB"))),
            id("mysql", Some("MariaDB"), Some("10.11.6"))
        );
        assert_eq!(
            identify(
                3306,
                Some(&mysql_handshake("5.5.5-10.11.6-MariaDB-0+deb12u1"))
            ),
            id("mysql", Some("MariaDB"), Some("10.11.6"))
        );
    }

    #[test]
    fn mysql_host_not_allowed_error() {
        // ERR 1130 as sent to a client whose address is not in mysql.user.
        let msg = b"Host '127.0.0.2' is not allowed to connect to this MySQL server";
        let mut packet = ((3 + msg.len()) as u32).to_le_bytes()[..3].to_vec();
        packet.extend_from_slice(&[0, 0xff, 0x6a, 0x04]);
        packet.extend_from_slice(msg);
        assert_eq!(identify(3306, Some(&packet)), id("mysql", None, None));
    }

    #[test]
    fn truncated_mysql_is_not_trusted() {
        // Header only, no NUL-terminated version: not enough to say MySQL; the port decides.
        assert_eq!(
            identify(4444, Some(&[0x4a, 0, 0, 0, 10, b'5'])),
            id("unknown", None, None)
        );
        assert_eq!(
            identify(3306, Some(&[0x4a, 0, 0, 0, 10])),
            id("mysql", None, None)
        );
    }

    #[test]
    fn telnet_negotiation() {
        // IAC DO TERMINAL-TYPE, IAC DO TERMINAL-SPEED, ... as sent by Linux telnetd.
        let g = [
            0xff, 0xfd, 0x18, 0xff, 0xfd, 0x20, 0xff, 0xfd, 0x23, 0xff, 0xfd, 0x27,
        ];
        assert_eq!(identify(23, Some(&g)), id("telnet", None, None));
        assert_eq!(identify(2323, Some(&g)), id("telnet", None, None));
        // IAC WILL ECHO, IAC WILL SUPPRESS-GO-AHEAD (busybox, routers).
        assert_eq!(
            identify(9999, Some(&[0xff, 0xfb, 0x01, 0xff, 0xfb, 0x03])).service,
            "telnet"
        );
    }

    #[test]
    fn vnc_rfb() {
        assert_eq!(
            identify(5900, Some(b"RFB 003.008\n")),
            id("vnc", Some("RFB"), Some("3.8"))
        );
        assert_eq!(
            identify(5999, Some(b"RFB 003.003\n")),
            id("vnc", Some("RFB"), Some("3.3"))
        );
        assert_eq!(identify(5999, Some(b"RFB 00")), id("unknown", None, None));
    }

    #[test]
    fn redis_errors() {
        assert_eq!(
            identify(6379, Some(b"-NOAUTH Authentication required.\r\n")),
            id("redis", None, None)
        );
        assert_eq!(
            identify(
                16379,
                Some(b"-DENIED Redis is running in protected mode because protected mode is enabled\r\n")
            ),
            id("redis", None, None)
        );
        assert_eq!(
            identify(
                7777,
                Some(b"-ERR unknown command 'GET', with args beginning with: \r\n")
            ),
            id("redis", None, None)
        );
    }

    #[test]
    fn http_responses() {
        let nginx = b"HTTP/1.1 400 Bad Request\r\nServer: nginx/1.18.0 (Ubuntu)\r\nDate: Tue, 02 Jan 2024 02:00:00 GMT\r\nContent-Type: text/html\r\n\r\n<html>";
        assert_eq!(
            identify(80, Some(nginx)),
            id("http", Some("nginx"), Some("1.18.0"))
        );
        assert_eq!(identify(22, Some(nginx)).service, "http");
        let apache = b"HTTP/1.0 200 OK\r\nDate: Tue, 02 Jan 2024 02:00:00 GMT\r\nserver: Apache/2.4.57 (Debian)\r\n\r\n";
        assert_eq!(
            identify(8080, Some(apache)),
            id("http", Some("Apache"), Some("2.4.57"))
        );
        let iis = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/html; charset=us-ascii\r\nServer: Microsoft-HTTPAPI/2.0\r\n\r\n";
        assert_eq!(
            identify(5985, Some(iis)),
            id("winrm", Some("Microsoft-HTTPAPI"), Some("2.0"))
        );
        let bare = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(identify(9200, Some(bare)), id("elasticsearch", None, None));
        assert_eq!(identify(12345, Some(bare)), id("http", None, None));
        // A Server header in the body does not count.
        let body = b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nServer: fake/1.0\r\n";
        assert_eq!(identify(80, Some(body)), id("http", None, None));
        let no_version = b"HTTP/1.1 200 OK\nServer: BWS\n\n";
        assert_eq!(
            identify(80, Some(no_version)),
            id("http", Some("BWS"), None)
        );
    }

    #[test]
    fn port_decides_without_a_recognisable_greeting() {
        assert_eq!(identify(5432, None), id("postgresql", None, None));
        assert_eq!(identify(445, None), id("smb", None, None));
        assert_eq!(identify(8080, None), id("http", None, None));
        assert_eq!(identify(8443, None), id("https", None, None));
        assert_eq!(identify(6379, Some(b"")), id("redis", None, None));
        assert_eq!(
            identify(1433, Some(b"\x04\x01\x00\x25garbage")),
            id("mssql", None, None)
        );
        assert_eq!(identify(40000, None), id("unknown", None, None));
        assert_eq!(
            identify(40000, Some(b"hello there\r\n")),
            id("unknown", None, None)
        );
        assert_eq!(identify(0, Some(&[0xff])), id("unknown", None, None));
    }

    #[test]
    fn well_known_ports() {
        for (port, name) in [
            (21, "ftp"),
            (22, "ssh"),
            (23, "telnet"),
            (25, "smtp"),
            (53, "domain"),
            (80, "http"),
            (110, "pop3"),
            (135, "msrpc"),
            (139, "netbios-ssn"),
            (143, "imap"),
            (443, "https"),
            (445, "smb"),
            (1433, "mssql"),
            (1521, "oracle-tns"),
            (2375, "docker"),
            (3306, "mysql"),
            (3389, "rdp"),
            (5432, "postgresql"),
            (5900, "vnc"),
            (6379, "redis"),
            (6443, "kubernetes"),
            (8080, "http"),
            (8443, "https"),
            (9200, "elasticsearch"),
            (10250, "kubelet"),
            (10255, "kubelet"),
            (11211, "memcached"),
            (27017, "mongodb"),
        ] {
            assert_eq!(service_for_port(port), Some(name), "port {port}");
        }
        assert_eq!(service_for_port(1), None);
    }

    #[test]
    fn printable_escapes_and_trims() {
        assert_eq!(
            printable(b"SSH-2.0-OpenSSH_8.9p1 Ubuntu-3\r\n"),
            "SSH-2.0-OpenSSH_8.9p1 Ubuntu-3"
        );
        assert_eq!(
            printable(b"220-FileZilla\r\n220 hello\r\n"),
            "220-FileZilla\\r\\n220 hello"
        );
        assert_eq!(
            printable(&[0xff, 0xfd, 0x18, 0x01]),
            "\u{fffd}\u{fffd}\\x18\\x01"
        );
        assert_eq!(printable(b"a\tb\x1b[31mc\x7f"), "a\\tb\\x1b[31mc\\x7f");
        assert_eq!(printable(b"back\\slash"), "back\\\\slash");
        assert_eq!(printable("中文 问候".as_bytes()), "中文 问候");
        assert_eq!(printable("a\u{202e}b".as_bytes()), "a\\u{202e}b");
        assert_eq!(printable(b""), "");
    }

    #[test]
    fn printable_is_bounded() {
        let long = vec![b'a'; 1000];
        let out = printable(&long);
        assert_eq!(out.chars().count(), PRINTABLE_MAX);
        assert!(out.ends_with('…'));

        // Escapes are never cut in half.
        let controls = vec![0x01u8; 1000];
        let out = printable(&controls);
        assert!(out.chars().count() <= PRINTABLE_MAX);
        assert!(out.trim_end_matches('…').ends_with("\\x01"));

        let exact = vec![b'b'; PRINTABLE_MAX];
        assert!(printable(&exact).chars().count() <= PRINTABLE_MAX);
        let fits = vec![b'c'; PRINTABLE_MAX - 1];
        assert_eq!(printable(&fits), "c".repeat(PRINTABLE_MAX - 1));
    }

    #[test]
    fn never_panics_on_odd_bytes() {
        // Every prefix of every sample, and some noise: identify and printable must not panic.
        let samples: Vec<Vec<u8>> = vec![
            b"SSH-2.0-OpenSSH_8.9p1 Ubuntu-3\r\n".to_vec(),
            mysql_handshake("10.11.6-MariaDB"),
            b"RFB 003.008\n".to_vec(),
            b"HTTP/1.1 200 OK\r\nServer: nginx/1.18.0\r\n\r\n".to_vec(),
            b"220 (vsFTPd 3.0.3)\r\n".to_vec(),
            "220 中文 ESMTP Postfix\r\n".as_bytes().to_vec(),
            vec![0xff, 0xfd, 0x18],
            vec![0xff, 0xff, 0xff, 0x00, 0xff, 0xff],
            vec![0x01, 0x00, 0x00, 0x00, 0x0a, 0xe4, 0xb8],
            (0u8..=255).collect(),
        ];
        for sample in &samples {
            for end in 0..=sample.len() {
                for port in [0, 21, 22, 25, 110, 3306, 9200, 65535] {
                    let _ = identify(port, Some(&sample[..end]));
                }
                let _ = printable(&sample[..end]);
            }
        }
    }
}

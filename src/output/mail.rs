//! Mail: composing MIME messages and handing them to an SMTP server with lettre.
//!
//! Input: a [`Letter`] (subject, text, HTML, attachments) and the `smtp` and `trust` config.
//! Output: the RFC 5322 text of the message ([`compose`]), which the outbox stores as it is,
//! and its delivery ([`Mailer::send`]). Composition and delivery are apart so a message can be
//! stored before any attempt and sent, byte for byte, after a restart.
//!
//! Invariants: every header goes through lettre's builder (which encodes it), and subjects
//! lose any control character first, so nothing observed on the network can add a header.
//! TLS is rustls with the ring provider; the trust anchors are the system roots plus the
//! config's `trust.ca_files`. The password only ever comes from the environment variable
//! named by `smtp.password_env`. Every SMTP exchange runs under a timeout.

use std::path::PathBuf;
use std::time::Duration;

use lettre::address::Envelope;
use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::{SmtpSecurity, SmtpSettings, TrustSettings};

/// Whole SMTP session (connect, TLS, auth, data) for one message.
const SMTP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("invalid sender {0:?}")]
    Sender(String),
    #[error("invalid recipient {0:?}")]
    Recipient(String),
    #[error("cannot build the message: {0}")]
    Build(#[from] lettre::error::Error),
    #[error("invalid attachment type {0:?}")]
    ContentType(String),
    #[error("environment variable {0} (smtp.password_env) is not set")]
    Password(String),
    #[error("cannot read CA file {path}: {source}")]
    CaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bad CA file {path}: {source}")]
    CaParse {
        path: PathBuf,
        #[source]
        source: lettre::transport::smtp::Error,
    },
    #[error("cannot set up SMTP to {host}: {source}")]
    Setup {
        host: String,
        #[source]
        source: lettre::transport::smtp::Error,
    },
    #[error("smtp: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
    #[error("smtp: no answer within {} s", SMTP_TIMEOUT.as_secs())]
    Timeout,
}

impl MailError {
    /// Whether trying again later cannot help (the server refused for good, or the message
    /// itself is bad).
    pub fn is_permanent(&self) -> bool {
        match self {
            MailError::Smtp(e) => e.is_permanent(),
            MailError::Sender(_) | MailError::Recipient(_) | MailError::Build(_) => true,
            _ => false,
        }
    }
}

/// A file attached to a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub filename: String,
    /// E.g. `text/csv; charset=utf-8`.
    pub content_type: String,
    pub body: Vec<u8>,
}

/// What a message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Letter {
    /// `Name <address>` or a bare address.
    pub from: String,
    pub to: Vec<String>,
    /// Copied (`Cc`), e.g. a department's leadership on an escalated notice; default none.
    pub cc: Vec<String>,
    pub subject: String,
    pub text: String,
    pub html: String,
    pub attachments: Vec<Attached>,
}

/// A composed message: envelope and wire text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Composed {
    pub sender: String,
    pub recipients: Vec<String>,
    /// The subject as it was put in the header (control characters removed).
    pub subject: String,
    /// RFC 5322, CRLF line ends, headers and bodies encoded (7-bit clean).
    pub message: String,
}

/// A header value with every control character (CR and LF above all) replaced by a space.
pub fn header_safe(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    cleaned.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Build the MIME message: `multipart/mixed` of `multipart/alternative` (text, HTML) and the
/// attachments.
pub fn compose(letter: &Letter) -> Result<Composed, MailError> {
    let from: Mailbox = letter
        .from
        .parse()
        .map_err(|_| MailError::Sender(letter.from.clone()))?;
    let subject = header_safe(&letter.subject);
    let mut builder = Message::builder()
        .from(from.clone())
        .subject(subject.clone());
    let mut recipients = Vec::new();
    for to in &letter.to {
        let mailbox: Mailbox = to.parse().map_err(|_| MailError::Recipient(to.clone()))?;
        recipients.push(mailbox.email.to_string());
        builder = builder.to(mailbox);
    }
    for cc in &letter.cc {
        let mailbox: Mailbox = cc.parse().map_err(|_| MailError::Recipient(cc.clone()))?;
        if !recipients.contains(&mailbox.email.to_string()) {
            recipients.push(mailbox.email.to_string());
        }
        builder = builder.cc(mailbox);
    }
    let mut mixed = MultiPart::mixed().multipart(MultiPart::alternative_plain_html(
        letter.text.clone(),
        letter.html.clone(),
    ));
    for a in &letter.attachments {
        let content_type = ContentType::parse(&a.content_type)
            .map_err(|_| MailError::ContentType(a.content_type.clone()))?;
        let part: SinglePart =
            Attachment::new(header_safe(&a.filename)).body(a.body.clone(), content_type);
        mixed = mixed.singlepart(part);
    }
    let message = builder.multipart(mixed)?;
    Ok(Composed {
        sender: from.email.to_string(),
        recipients,
        subject,
        message: String::from_utf8_lossy(&message.formatted()).into_owned(),
    })
}

/// An SMTP client for the configured server.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

impl Mailer {
    /// Set up the transport: security mode, trust anchors, credentials from the environment.
    pub fn new(smtp: &SmtpSettings, trust: &TrustSettings) -> Result<Mailer, MailError> {
        let setup = |source| MailError::Setup {
            host: smtp.host.clone(),
            source,
        };
        let tls = || -> Result<TlsParameters, MailError> {
            let mut params = TlsParameters::builder(smtp.host.clone());
            for path in &trust.ca_files {
                let pem = std::fs::read(path).map_err(|source| MailError::CaFile {
                    path: path.clone(),
                    source,
                })?;
                let cert = Certificate::from_pem(&pem).map_err(|source| MailError::CaParse {
                    path: path.clone(),
                    source,
                })?;
                params = params.add_root_certificate(cert);
            }
            params.build_rustls().map_err(setup)
        };
        let security = match smtp.security {
            SmtpSecurity::StartTls => Tls::Required(tls()?),
            SmtpSecurity::Tls => Tls::Wrapper(tls()?),
            SmtpSecurity::None => Tls::None,
        };
        // The EHLO name: the sender's domain (no hostname lookup, and nothing local leaks).
        let hello = smtp
            .from
            .parse::<Mailbox>()
            .map(|m| m.email.domain().to_string())
            .unwrap_or_else(|_| "localhost".to_string());
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host)
            .port(smtp.port)
            .tls(security)
            .hello_name(ClientId::Domain(hello))
            .timeout(Some(SMTP_TIMEOUT));
        if let Some(user) = &smtp.username {
            let password = match &smtp.password_env {
                Some(var) => std::env::var(var).map_err(|_| MailError::Password(var.clone()))?,
                None => String::new(),
            };
            builder = builder.credentials(Credentials::new(user.clone(), password));
        }
        Ok(Mailer {
            transport: builder.build(),
        })
    }

    /// Send a composed message to its envelope recipients.
    pub async fn send(
        &self,
        sender: &str,
        recipients: &[String],
        message: &str,
    ) -> Result<(), MailError> {
        let from: Address = sender
            .parse()
            .map_err(|_| MailError::Sender(sender.to_string()))?;
        let to = recipients
            .iter()
            .map(|r| {
                r.parse::<Address>()
                    .map_err(|_| MailError::Recipient(r.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let envelope = Envelope::new(Some(from), to)
            .map_err(|_| MailError::Recipient(recipients.join(",")))?;
        match tokio::time::timeout(
            SMTP_TIMEOUT,
            self.transport.send_raw(&envelope, message.as_bytes()),
        )
        .await
        {
            Ok(result) => result.map(|_| ()).map_err(MailError::Smtp),
            Err(_) => Err(MailError::Timeout),
        }
    }
}

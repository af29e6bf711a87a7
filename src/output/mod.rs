//! Outputs: what netpatrol shows. `report` renders a scan as the JSON document of docs/report.md
//! and as the terminal table; `metrics` builds the Prometheus families from the store at scrape
//! time; `mail` sends through SMTP.

pub mod mail;
pub mod metrics;
pub mod report;

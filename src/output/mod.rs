//! Outputs: what netpatrol shows. `report` renders a scan as the JSON document of CONTRACT.md §3
//! and as the terminal table.

pub mod api;
pub mod mail;
pub mod metrics;
pub mod report;

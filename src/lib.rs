//! netpatrol: keeps a district's government network compliant and secure.
//!
//! The modules follow the pipeline: `config` → `scope` → `probe` → `observation` →
//! `reconcile` (facts, from `facts`) → `rules` → `finding` (lifecycle) → `store` → `output`
//! (report, metrics, mail) and `bulletin`. `scan` runs the probes of one scan; `pass` takes a
//! scan through assessment to the report and the store, for `app` and `daemon` alike;
//! `daemon` schedules passes and serves HTTP (`daemon::api`), and as a hub takes sensors'
//! observations (`daemon::hub`); `sensor` is `netpatrol sensor`, a vantage point that scans
//! what its hub assigns and sends the observations there; `lab` is the simulated district
//! on loopback used by `demo` and the tests; `probe_cmd` runs one probe on one endpoint for
//! `netpatrol probe`; `rectify` signs and checks the departments' capability links of the
//! rectification loop; `cli` and `app` are the command line and its
//! wiring. `config::Loaded::compile` is the one load step of every command and reload; `problem`
//! (what is wrong with a file the operator wrote, and where) and `severity` are leaf types that
//! `config`, `rules` and the outputs share without depending on each other.

pub mod app;
pub mod bulletin;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod facts;
pub mod finding;
pub mod lab;
pub mod observation;
pub mod output;
pub mod pass;
pub mod probe;
pub mod probe_cmd;
pub mod problem;
pub mod reconcile;
pub mod rectify;
pub mod rules;
pub mod scan;
pub mod scope;
pub mod sensor;
pub mod severity;
pub mod store;

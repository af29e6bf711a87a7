//! The one integration-test binary: every test runs against real servers on loopback.

mod browser;
mod bulletin;
mod config;
mod daemon;
mod docs;
mod engine;
mod exposure;
mod findings;
mod hubs;
mod probes;
mod rectify;
mod retest;
mod rules;
mod scan;
mod sensor;
mod store;
mod support;
mod syn;
mod tlcp;
mod tls;

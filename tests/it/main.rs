//! The one integration-test binary: every test runs against real servers on loopback.

mod config;
mod exposure;
mod findings;
mod probes;
mod rules;
mod scan;
mod support;
mod tls;

//! Fuzz the TLS probe's parsing of what a server sends: record and handshake framing
//! (ServerHello, Certificate, alerts), the Certificate list, and certificate facts over the
//! DER that comes out of it. None of them may panic, whatever the bytes.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use netpatrol::probe::tls::{self, Trust, wire};

fn trust() -> &'static Trust {
    static T: OnceLock<Trust> = OnceLock::new();
    T.get_or_init(Trust::default)
}

fuzz_target!(|data: &[u8]| {
    let now = chrono::DateTime::from_timestamp(1_750_000_000, 0).unwrap_or_default();
    let names = ["www.example.gov.cn".to_string()];
    for want_certs in [true, false] {
        if let wire::Parsed::Done(f) | wire::Parsed::NeedMore(f) =
            wire::parse_flight(data, want_certs)
            && let Some(certs) = f.certs
        {
            let _ = tls::cert_facts(&certs, &names, None, trust(), now);
        }
    }
    let _ = wire::parse_server_hello(data);
    let _ = wire::parse_certificate_list(data);
    let _ = wire::parse_client_hello(data);
    // The raw bytes as a certificate, too.
    let _ = tls::cert_facts(
        &[data.to_vec()],
        &names,
        "192.0.2.1".parse().ok(),
        trust(),
        now,
    );
});

//! Per-client limits apid enforces, with their documented defaults (docs/SECURITY.md).
//!
//! The same YAML mapping appears in two places: as `limits:` in apid's own config and as
//! `machine.apidLimits:` in the machine config, from which machined writes apid's. Every key is
//! optional; a missing key keeps its default.
//!
//! ```yaml
//! requestsPerSecond: 100        # per client certificate, refilled continuously
//! burst: 200                    # calls a client may make at once above the steady rate
//! maxInFlight: 64               # calls (incl. open streams) one certificate may have open
//! maxConnectionsPerAddress: 64  # TLS connections one source IP address may hold open
//! maxStreamsPerConnection: 256  # HTTP/2 streams (calls) one connection may have open
//! maxHeaderBytes: 65536         # largest request header block (4 KiB to 1 MiB)
//! ```

use serde::{Deserialize, Serialize};

use crate::error::Problems;

/// Steady calls per second one client certificate may make.
pub const DEFAULT_REQUESTS_PER_SECOND: u32 = 100;

/// Calls a client certificate may make in a burst above the steady rate (the token bucket's
/// size).
pub const DEFAULT_BURST: u32 = 200;

/// Calls (unary or streaming) one client certificate may have open at once, over all its
/// connections. talosctl opens a handful at most; `logs -f` on every service stays well below.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 64;

/// TLS connections one source IP address may hold open at once.
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: u32 = 64;

/// HTTP/2 streams (calls) one connection may have open at once; more get REFUSED_STREAM.
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// Largest request header block apid accepts, in bytes (gRPC metadata is small; talosctl sends
/// well under 1 KiB).
pub const DEFAULT_MAX_HEADER_BYTES: u32 = 64 * 1024;

/// The range `maxHeaderBytes` accepts: below 4 KiB ordinary gRPC metadata no longer fits,
/// above 1 MiB one header block is a memory lever.
pub const HEADER_BYTES_RANGE: std::ops::RangeInclusive<u32> = 4 * 1024..=1024 * 1024;

/// The largest value any limit accepts: beyond it a limit no longer limits anything.
pub const MAX_LIMIT: u32 = 1_000_000;

/// Validated per-client limits of apid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApidLimits {
    /// `requestsPerSecond`.
    pub requests_per_second: u32,
    /// `burst`.
    pub burst: u32,
    /// `maxInFlight`.
    pub max_in_flight: u32,
    /// `maxConnectionsPerAddress`.
    pub max_connections_per_address: u32,
    /// `maxStreamsPerConnection`.
    pub max_streams_per_connection: u32,
    /// `maxHeaderBytes`.
    pub max_header_bytes: u32,
}

impl Default for ApidLimits {
    fn default() -> Self {
        ApidLimits {
            requests_per_second: DEFAULT_REQUESTS_PER_SECOND,
            burst: DEFAULT_BURST,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_connections_per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        }
    }
}

impl ApidLimits {
    /// Validates `raw` (every problem is recorded under `prefix.<key>`); missing keys take
    /// their defaults. Returns the defaults in place of a bad value, so the caller decides by
    /// `problems` whether the whole document is valid.
    pub(crate) fn validate(
        problems: &mut Problems,
        prefix: &str,
        raw: Option<RawApidLimits>,
    ) -> ApidLimits {
        let raw = raw.unwrap_or_default();
        let defaults = ApidLimits::default();
        let mut check = |key: &str, value: Option<u32>, default: u32| match value {
            None => default,
            Some(0) => {
                problems.push(format!("{prefix}.{key}"), "must be at least 1");
                default
            }
            Some(v) if v > MAX_LIMIT => {
                problems.push(
                    format!("{prefix}.{key}"),
                    format!("must be at most {MAX_LIMIT}"),
                );
                default
            }
            Some(v) => v,
        };
        ApidLimits {
            requests_per_second: check(
                "requestsPerSecond",
                raw.requests_per_second,
                defaults.requests_per_second,
            ),
            burst: check("burst", raw.burst, defaults.burst),
            max_in_flight: check("maxInFlight", raw.max_in_flight, defaults.max_in_flight),
            max_connections_per_address: check(
                "maxConnectionsPerAddress",
                raw.max_connections_per_address,
                defaults.max_connections_per_address,
            ),
            max_streams_per_connection: check(
                "maxStreamsPerConnection",
                raw.max_streams_per_connection,
                defaults.max_streams_per_connection,
            ),
            max_header_bytes: match raw.max_header_bytes {
                None => defaults.max_header_bytes,
                Some(v) if HEADER_BYTES_RANGE.contains(&v) => v,
                Some(_) => {
                    problems.push(
                        format!("{prefix}.maxHeaderBytes"),
                        format!(
                            "must be between {} and {}",
                            HEADER_BYTES_RANGE.start(),
                            HEADER_BYTES_RANGE.end()
                        ),
                    );
                    defaults.max_header_bytes
                }
            },
        }
    }

    /// The serde form; `None` when every value is the default, and defaults left out, so a
    /// later change of default reaches files written earlier.
    pub fn to_raw(&self) -> Option<RawApidLimits> {
        let defaults = ApidLimits::default();
        let differs = |value: u32, default: u32| (value != default).then_some(value);
        let raw = RawApidLimits {
            requests_per_second: differs(self.requests_per_second, defaults.requests_per_second),
            burst: differs(self.burst, defaults.burst),
            max_in_flight: differs(self.max_in_flight, defaults.max_in_flight),
            max_connections_per_address: differs(
                self.max_connections_per_address,
                defaults.max_connections_per_address,
            ),
            max_streams_per_connection: differs(
                self.max_streams_per_connection,
                defaults.max_streams_per_connection,
            ),
            max_header_bytes: differs(self.max_header_bytes, defaults.max_header_bytes),
        };
        (raw != RawApidLimits::default()).then_some(raw)
    }
}

/// The limits as written in YAML, before validation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping of apid limits"
)]
pub struct RawApidLimits {
    /// `requestsPerSecond`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<u32>,
    /// `burst`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// `maxInFlight`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// `maxConnectionsPerAddress`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_address: Option<u32>,
    /// `maxStreamsPerConnection`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_streams_per_connection: Option<u32>,
    /// `maxHeaderBytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_header_bytes: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_keys_take_the_defaults_and_defaults_are_not_written() {
        let mut problems = Problems::default();
        let limits = ApidLimits::validate(&mut problems, "limits", None);
        assert!(problems.is_empty());
        assert_eq!(limits, ApidLimits::default());
        assert_eq!(limits.to_raw(), None);

        let raw = RawApidLimits {
            burst: Some(5),
            ..RawApidLimits::default()
        };
        let limits = ApidLimits::validate(&mut problems, "limits", Some(raw.clone()));
        assert!(problems.is_empty());
        assert_eq!(limits.burst, 5);
        assert_eq!(limits.requests_per_second, DEFAULT_REQUESTS_PER_SECOND);
        assert_eq!(limits.to_raw(), Some(raw));
    }

    #[test]
    fn zero_and_huge_values_are_problems_named_by_key() {
        let mut problems = Problems::default();
        ApidLimits::validate(
            &mut problems,
            "machine.apidLimits",
            Some(RawApidLimits {
                requests_per_second: Some(0),
                max_connections_per_address: Some(MAX_LIMIT + 1),
                max_streams_per_connection: Some(0),
                max_header_bytes: Some(1024),
                ..RawApidLimits::default()
            }),
        );
        assert_eq!(problems.len(), 4);
        let text = problems
            .into_error(crate::Document::MachineConfig)
            .to_string();
        assert!(
            text.contains("machine.apidLimits.requestsPerSecond"),
            "{text}"
        );
        assert!(
            text.contains("machine.apidLimits.maxConnectionsPerAddress"),
            "{text}"
        );
        assert!(
            text.contains("machine.apidLimits.maxStreamsPerConnection"),
            "{text}"
        );
        assert!(
            text.contains("machine.apidLimits.maxHeaderBytes: must be between 4096 and 1048576"),
            "{text}"
        );
    }

    const APID: &str = "\
tls: {cert: /s/server.crt, key: /s/server.key, ca: /s/ca.pem}
machinedSocket: /s/machined.sock
revocation: /s/revoked.json
limits: {requestsPerSecond: 5, maxConnectionsPerAddress: 2}
";

    #[test]
    fn apid_config_carries_revocation_and_limits_and_round_trips() {
        let config = crate::ApidConfig::from_yaml(APID).expect("valid");
        assert_eq!(
            config.revocation.as_deref(),
            Some(std::path::Path::new("/s/revoked.json"))
        );
        assert_eq!(config.limits.requests_per_second, 5);
        assert_eq!(config.limits.max_connections_per_address, 2);
        assert_eq!(config.limits.burst, DEFAULT_BURST);
        let again = crate::ApidConfig::from_yaml(&config.to_yaml().expect("yaml")).expect("again");
        assert_eq!(again, config);
    }

    #[test]
    fn apid_config_refuses_a_relative_list_and_bad_or_unknown_limits() {
        for (yaml, key) in [
            (
                APID.replace("/s/revoked.json", "revoked.json"),
                "revocation",
            ),
            (
                APID.replace("requestsPerSecond: 5", "requestsPerSecond: 0"),
                "limits.requestsPerSecond",
            ),
        ] {
            let err = crate::ApidConfig::from_yaml(&yaml).expect_err(key);
            assert!(
                err.problems().iter().any(|p| p.key == key),
                "{key}: {err:?}"
            );
        }
        let typo = APID.replace("requestsPerSecond", "requestPerSecond");
        assert!(crate::ApidConfig::from_yaml(&typo).is_err());
    }

    fn machine_yaml(limits: &str) -> String {
        use crate::test_support::{CA_CERT, CA_KEY};
        format!(
            "version: v1alpha1\n\
             machine:\n  \
               type: controlplane\n  \
               token: abcdef.0123456789abcdef\n  \
               ca:\n    crt: {crt}\n    key: {key}\n  \
               apidLimits: {limits}\n\
             cluster:\n  name: dev\n  endpoints: [127.0.0.1]\n",
            crt = crate::Base64Pem::from_pem(CA_CERT).to_base64(),
            key = crate::Base64Pem::from_pem(CA_KEY).to_base64(),
        )
    }

    #[test]
    fn machine_config_sets_apid_limits_and_names_bad_ones() {
        let config =
            crate::MachineConfig::from_yaml(&machine_yaml("{maxInFlight: 8}")).expect("valid");
        assert_eq!(config.apid_limits().max_in_flight, 8);
        assert_eq!(config.apid_limits().burst, DEFAULT_BURST);
        let yaml = config.to_yaml().expect("yaml");
        assert!(yaml.contains("apidLimits"), "{yaml}");
        assert_eq!(
            crate::MachineConfig::from_yaml(&yaml).expect("again"),
            config
        );

        let err =
            crate::MachineConfig::from_yaml(&machine_yaml("{maxInFlight: 0}")).expect_err("zero");
        assert!(
            err.problems()
                .iter()
                .any(|p| p.key == "machine.apidLimits.maxInFlight"),
            "{err:?}"
        );
    }
}

//! `Admission`: the layer in front of the handler that decides whether a call may be served.
//!
//! In order, each step refusing with a gRPC status before the request body is read:
//! 1. the method must be the one trustd serves (`Unimplemented` otherwise; a streaming method
//!    of basalt's API gets Talos's "streaming APIs are not supported");
//! 2. the peer address comes from the connection ([`TlsConnectInfo`]), never from metadata;
//! 3. the peer must not be locked out and must have budget left ([`PeerLimiter`]:
//!    `ResourceExhausted` with a retry hint);
//! 4. the first `token` metadata value must be an accepted, unexpired token ([`TokenSet`]:
//!    `Unauthenticated` "missing token" / "invalid token"). A bad token counts toward the
//!    peer's lockout; a missing one does not (it guesses nothing), but it does use budget.
//!
//! An admitted request carries [`Admitted`] in its extensions for the handler.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use basalt_authz::metadata::TOKEN;
use basalt_config::TrustdConfig;
use tokio::sync::watch;
use tonic::Status;
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};
use tracing::warn;

use crate::CERTIFICATE_METHOD;
use crate::error::Error;
use crate::limiter::{PeerKey, PeerLimiter, Refusal};
use crate::metrics::TrustdMetrics;
use crate::tokens::{TokenCheck, TokenSet};

/// What the handler learns about an admitted call.
#[derive(Clone, Debug)]
pub(crate) struct Admitted {
    /// The caller's address, from the TCP accept.
    pub(crate) peer: SocketAddr,
    /// Fingerprint of the token it presented.
    pub(crate) token: String,
}

/// The admission decision, shared by every connection.
#[derive(Debug)]
pub(crate) struct Gate {
    /// The accepted tokens as last (re)loaded (`crate::trust`).
    tokens: watch::Receiver<Arc<TokenSet>>,
    limiter: PeerLimiter,
    per_minute: u32,
    /// Refusals are counted here (`crate::metrics`).
    metrics: Arc<TrustdMetrics>,
}

impl Gate {
    /// A gate for the configured limits, checking tokens against what `tokens` holds at
    /// each call.
    pub(crate) fn new(config: &TrustdConfig, tokens: watch::Receiver<Arc<TokenSet>>) -> Self {
        Self {
            tokens,
            limiter: PeerLimiter::new(config.rate_limit),
            per_minute: config.rate_limit.per_peer_per_minute,
            metrics: Arc::default(),
        }
    }

    /// The counters this gate (and the signer) feed.
    pub(crate) fn metrics(&self) -> &Arc<TrustdMetrics> {
        &self.metrics
    }

    /// How many configured tokens are valid now.
    pub(crate) fn valid_tokens(&self) -> usize {
        self.tokens.borrow().valid_count(SystemTime::now())
    }

    /// Steps 3 and 4 of the module docs for a call from `peer` with `token` (first value).
    pub(crate) fn admit(&self, peer: SocketAddr, token: Option<&[u8]>) -> Result<Admitted, Error> {
        let key = PeerKey::of(peer.ip());
        let now = Instant::now();
        match self.limiter.admit(key, now) {
            Ok(()) => {}
            Err(Refusal::LockedOut { retry_after }) => {
                self.metrics.locked_out();
                warn!(peer.addr = %peer, "Refused: peer is locked out after bad tokens");
                return Err(Error::LockedOut {
                    peer: key.to_string(),
                    retry_after,
                });
            }
            Err(Refusal::RateLimited { retry_after }) => {
                self.metrics.rate_limited();
                warn!(peer.addr = %peer, "Refused: peer exceeded its rate limit");
                return Err(Error::RateLimited {
                    peer: key.to_string(),
                    per_minute: self.per_minute,
                    retry_after,
                });
            }
        }
        let Some(token) = token else {
            self.metrics.token_failure();
            warn!(peer.addr = %peer, "Refused: no token");
            return Err(Error::MissingToken);
        };
        // A snapshot: a reload during the check does not change this call's outcome.
        let tokens = Arc::clone(&self.tokens.borrow());
        let reason = match tokens.check(token, SystemTime::now()) {
            TokenCheck::Accepted { fingerprint } => {
                self.limiter.record_success(key);
                return Ok(Admitted {
                    peer,
                    token: fingerprint,
                });
            }
            // The fingerprint of an expired token is logged: it names which retired token a
            // node still uses, which is what the operator has to fix.
            TokenCheck::Expired { fingerprint } => format!("expired token {fingerprint}"),
            TokenCheck::Unknown => "unknown token".to_owned(),
        };
        self.metrics.token_failure();
        let lockout = self.limiter.record_failure(key, now);
        warn!(
            peer.addr = %peer,
            reason = %reason,
            failures = self.limiter.failures(key),
            "Refused: invalid token"
        );
        if let Some(duration) = lockout {
            warn!(
                peer = %key,
                lockout_s = duration.as_secs(),
                "Peer locked out after repeated bad tokens"
            );
        }
        Err(Error::InvalidToken)
    }
}

/// Builds [`Admission`] around the router.
#[derive(Clone, Debug)]
pub(crate) struct AdmissionLayer {
    gate: Arc<Gate>,
}

impl AdmissionLayer {
    pub(crate) fn new(gate: Arc<Gate>) -> Self {
        Self { gate }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            gate: Arc::clone(&self.gate),
        }
    }
}

/// See the module docs.
#[derive(Clone, Debug)]
pub(crate) struct Admission<S> {
    inner: S,
    gate: Arc<Gate>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S> Service<http::Request<Body>> for Admission<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        match self.check(&request) {
            Ok(admitted) => {
                request.extensions_mut().insert(admitted);
                Box::pin(self.inner.call(request))
            }
            Err(err) => {
                let response = Status::from(err).into_http();
                Box::pin(std::future::ready(Ok(response)))
            }
        }
    }
}

impl<S> Admission<S> {
    fn check(&self, request: &http::Request<Body>) -> Result<Admitted, Error> {
        let path = request.uri().path();
        if path != CERTIFICATE_METHOD {
            let streaming = basalt_api::METHODS
                .iter()
                .any(|m| m.path == path && (m.client_streaming || m.server_streaming));
            return Err(if streaming {
                Error::StreamingNotSupported
            } else {
                Error::UnknownMethod {
                    path: path.to_owned(),
                }
            });
        }
        let peer = peer_addr(request).ok_or(Error::NoPeerAddress)?;
        // Only the first value counts, as in Talos.
        let token = request.headers().get(TOKEN).map(|v| v.as_bytes());
        self.gate.admit(peer, token)
    }
}

/// The peer's address as the TCP accept saw it.
pub(crate) fn peer_addr<B>(request: &http::Request<B>) -> Option<SocketAddr> {
    request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.get_ref().remote_addr())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use basalt_config::{AcceptedToken, RateLimit, Token};

    use super::*;

    const GOOD: &str = "abcdef.0123456789abcdef";

    fn gate(lockout_after: u32) -> Gate {
        let mut config = TrustdConfig::from_yaml(
            "tls: {cert: /c, key: /k}\nca: {cert: /c, key: /k}\njournal: /j\n\
             tokens: [{token: abcdef.0123456789abcdef}]\n",
        )
        .unwrap();
        config.tokens.push(AcceptedToken {
            token: Token::parse("zzzzzz.0123456789abcdef").unwrap(),
            expires: Some(SystemTime::now() - Duration::from_secs(1)),
        });
        config.rate_limit = RateLimit {
            per_peer_per_minute: 100,
            lockout_after,
            lockout_for: Duration::from_secs(60),
        };
        let (_, tokens) = watch::channel(Arc::new(TokenSet::new(&config.tokens)));
        Gate::new(&config, tokens)
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn good_token_is_admitted_with_its_fingerprint() {
        let gate = gate(5);
        let admitted = gate
            .admit(addr("10.0.0.1:1000"), Some(GOOD.as_bytes()))
            .unwrap();
        assert_eq!(admitted.token, crate::token_fingerprint(GOOD));
        assert_eq!(gate.valid_tokens(), 1);
    }

    #[test]
    fn missing_wrong_and_expired_tokens_are_refused() {
        let gate = gate(5);
        let peer = addr("10.0.0.1:1000");
        assert!(matches!(gate.admit(peer, None), Err(Error::MissingToken)));
        assert!(matches!(
            gate.admit(peer, Some(b"wrong")),
            Err(Error::InvalidToken)
        ));
        assert!(matches!(
            gate.admit(peer, Some(b"zzzzzz.0123456789abcdef")),
            Err(Error::InvalidToken)
        ));
    }

    #[test]
    fn lockout_refuses_even_a_good_token_from_that_peer_only() {
        let gate = gate(2);
        let peer = addr("10.0.0.1:1000");
        // A missing token does not count toward the lockout.
        let _ = gate.admit(peer, None);
        for _ in 0..2 {
            assert!(matches!(
                gate.admit(peer, Some(b"wrong")),
                Err(Error::InvalidToken)
            ));
        }
        let err = gate
            .admit(addr("10.0.0.1:2000"), Some(GOOD.as_bytes()))
            .unwrap_err();
        assert!(
            matches!(&err, Error::LockedOut { peer, .. } if peer == "10.0.0.1"),
            "{err:?}"
        );
        gate.admit(addr("10.0.0.2:1000"), Some(GOOD.as_bytes()))
            .unwrap();
    }
}

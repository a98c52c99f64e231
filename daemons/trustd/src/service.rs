//! The `securityapi.SecurityService` handler: CSR in, certificate and CA bundle out.
//!
//! The order matters: the size cap is checked before any parsing, the CSR's signature before
//! its contents are looked at, the policy before signing, and the journal line is durable
//! before the certificate is returned (a certificate that exists without a record would be
//! invisible to an operator looking for what was issued).

use std::sync::Arc;

use basalt_api::securityapi::security_service_server::SecurityService;
use basalt_api::securityapi::{CertificateRequest, CertificateResponse};
use basalt_pki::{Identity, SigningPolicy};
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::admission::Admitted;
use crate::error::Error;
use crate::journal::{Journal, JournalRecord};
use crate::metrics::TrustdMetrics;
use crate::trust::SigningCa;

/// Everything the handler needs, loaded once by `Server::bind`.
#[derive(Debug)]
pub(crate) struct Signer {
    /// The issuing CA and response bundle as last (re)loaded (`crate::trust`).
    pub(crate) signing: watch::Receiver<Arc<SigningCa>>,
    pub(crate) policy: SigningPolicy,
    pub(crate) journal: Journal,
    /// Counts issued certificates (`crate::metrics`).
    pub(crate) metrics: Arc<TrustdMetrics>,
}

impl Signer {
    /// Signs `csr_pem` for an admitted caller; see the module docs for the order of steps.
    pub(crate) async fn issue(
        &self,
        admitted: &Admitted,
        csr_pem: &[u8],
    ) -> Result<CertificateResponse, Error> {
        // Announced first: while this call signs, the journal holds its current batch open for
        // this line (group commit, crate::journal).
        let expected = self.journal.expect();
        let csr = self.policy.parse_csr(csr_pem).map_err(Error::from_parse)?;
        // One snapshot for the whole call: the certificate and the bundle returned with it
        // always come from the same CA generation.
        let signing = Arc::clone(&self.signing.borrow());
        let cert_der = signing
            .ca
            .sign_csr_der(&csr, &self.policy)
            .map_err(Error::from_sign)?;
        let leaf = Identity::from_der(&cert_der).map_err(Error::ReadIssued)?;
        let record = JournalRecord::new(&leaf, admitted.peer, &admitted.token);
        self.journal
            .append(expected, &record)
            .await
            .map_err(Error::Journal)?;
        self.metrics.issued();

        info!(
            peer.addr = %admitted.peer,
            cert.cn = leaf.common_name.as_deref().unwrap_or(""),
            cert.sans = ?record.sans,
            cert.serial = %leaf.serial,
            cert.not_after = %record.not_after,
            token = %admitted.token,
            "Certificate issued"
        );
        let asked_for_more = csr.requested_ca()
            || !csr.requested_organizations().is_empty()
            || csr
                .requested_ext_key_usages()
                .iter()
                .any(|eku| eku != "serverAuth")
            || csr.dropped_san_count() > 0;
        if asked_for_more {
            // Worth a look: a worker's CSR never asks for any of this.
            warn!(
                peer.addr = %admitted.peer,
                csr.ca = csr.requested_ca(),
                csr.organizations = ?csr.requested_organizations(),
                csr.ext_key_usages = ?csr.requested_ext_key_usages(),
                csr.dropped_sans = csr.dropped_san_count(),
                "CSR asked for more than the policy grants; issued a plain server certificate"
            );
        }
        Ok(CertificateResponse {
            ca: signing.bundle.clone(),
            crt: basalt_pki::certificates_to_pem(&[cert_der]).into_bytes(),
        })
    }
}

/// The tonic service, a thin shell over [`Signer`].
#[derive(Clone, Debug)]
pub(crate) struct CertificateService {
    signer: Arc<Signer>,
}

impl CertificateService {
    pub(crate) fn new(signer: Arc<Signer>) -> Self {
        Self { signer }
    }
}

#[tonic::async_trait]
impl SecurityService for CertificateService {
    async fn certificate(
        &self,
        request: Request<CertificateRequest>,
    ) -> Result<Response<CertificateResponse>, Status> {
        let Some(admitted) = request.extensions().get::<Admitted>().cloned() else {
            return Err(Error::NotAdmitted.into());
        };
        let csr = request.into_inner().csr;
        match self.signer.issue(&admitted, &csr).await {
            Ok(response) => Ok(Response::new(response)),
            Err(err) => {
                if !matches!(
                    err,
                    Error::Sign(_) | Error::ReadIssued(_) | Error::Journal(_)
                ) {
                    // Internal errors are logged by the status mapping; caller faults here.
                    warn!(
                        peer.addr = %admitted.peer,
                        error = &err as &dyn std::error::Error,
                        "CSR refused"
                    );
                }
                Err(err.into())
            }
        }
    }
}

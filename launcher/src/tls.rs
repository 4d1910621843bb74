//! rustls configurations: clients of the cluster's TLS APIs, the invite endpoint's
//! server, and the joiner's client that pins the CA by its SHA-256 fingerprint.

use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::pki::sha256_hex;

/// Failure to build a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("invalid PEM in {what}: {message}")]
    Pem { what: &'static str, message: String },
    #[error("failed to build the TLS configuration")]
    Rustls(#[from] rustls::Error),
}

/// Returns the ring crypto provider.
///
/// rustls marks it deprecated because it lacks post-quantum key exchange. It is used
/// anyway because the alternative, aws-lc-rs, needs a C and CMake build on every Mac,
/// and these connections carry setup data over Tailscale, which is already encrypted.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|error| TlsError::Pem {
            what,
            message: error.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            message: "no certificate found".to_owned(),
        });
    }
    Ok(certs)
}

fn private_key(pem: &str, what: &'static str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|error| TlsError::Pem {
        what,
        message: error.to_string(),
    })
}

fn roots(ca_pem: &str) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certs(ca_pem, "the CA certificate")? {
        store.add(cert)?;
    }
    Ok(store)
}

/// Builds a client config that trusts only `ca_pem` and presents `identity` (certificate
/// chain PEM, key PEM) when the server requests a client certificate.
pub fn client_config(
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_pem)?);
    let config = match identity {
        Some((cert_pem, key_pem)) => builder.with_client_auth_cert(
            certs(cert_pem, "the client certificate")?,
            private_key(key_pem, "the client key")?,
        )?,
        None => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// Builds a server config that presents `chain_pem` (leaf first) with `key_pem` and
/// requests no client certificate.
pub fn server_config(chain_pem: &str, key_pem: &str) -> Result<ServerConfig, TlsError> {
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            certs(chain_pem, "the server certificate")?,
            private_key(key_pem, "the server key")?,
        )?;
    Ok(config)
}

/// Outcome of the pin check, kept so the caller can explain a failed handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinOutcome {
    /// The server's chain contained the pinned CA.
    Matched,
    /// The server's chain did not contain the pinned CA; these are the SHA-256
    /// fingerprints of the certificates it sent.
    Mismatch { presented: Vec<String> },
}

/// Verifies a server against the CA whose certificate has the pinned SHA-256
/// fingerprint: the CA must be in the chain the server sends, and the leaf must chain to
/// it and name the address dialled.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    pin: String,
    outcome: Mutex<Option<PinOutcome>>,
}

impl PinnedCaVerifier {
    pub fn new(pin: &str) -> Arc<Self> {
        Arc::new(Self {
            pin: pin.to_ascii_lowercase(),
            outcome: Mutex::new(None),
        })
    }

    /// Outcome of the last handshake, `None` when no certificate was checked.
    pub fn outcome(&self) -> Option<PinOutcome> {
        self.outcome.lock().expect("pin outcome lock").clone()
    }

    fn record(&self, outcome: PinOutcome) {
        *self.outcome.lock().expect("pin outcome lock") = Some(outcome);
    }

    /// Builds a client config that uses this verifier.
    pub fn client_config(self: &Arc<Self>) -> Result<ClientConfig, TlsError> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(self.clone())
            .with_no_client_auth();
        Ok(config)
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|cert| sha256_hex(cert) == self.pin)
        else {
            let presented = std::iter::once(end_entity)
                .chain(intermediates)
                .map(|cert| sha256_hex(cert))
                .collect();
            self.record(PinOutcome::Mismatch { presented });
            return Err(rustls::Error::General(
                "CA certificate does not match the pinned fingerprint".into(),
            ));
        };
        self.record(PinOutcome::Matched);

        // The pinned CA is now the only trust anchor: the leaf must chain to it, be valid
        // now, be meant for server authentication and name the address dialled.
        let mut store = RootCertStore::empty();
        store.add(ca.clone().into_owned())?;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider())
            .build()
            .map_err(|error| rustls::Error::General(error.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = provider().signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = provider().signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

//! The cluster's certificate authority, its leaf certificates, and the other secrets
//! `styx init` makes (gossip keys, random tokens).
//!
//! Every key is ECDSA P-256, which Nomad, Consul and Vault all accept. Leaf certificates
//! carry the names each agent checks: Nomad verifies `server.<region>.nomad` and
//! `client.<region>.nomad`, Consul verifies `server.<datacenter>.consul`, and every
//! certificate also names `localhost`, 127.0.0.1 and the node's Tailscale address and name.

use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use time::{Duration, OffsetDateTime};

/// Validity of the certificate authority.
pub const CA_VALIDITY: Duration = Duration::days(3650);
/// Validity of every leaf certificate.
// TODO: nothing renews leaf certificates yet; a `styx renew` that re-signs them from the
// CA before they expire would close this.
pub const LEAF_VALIDITY: Duration = Duration::days(730);

/// Failure to create, load or use certificates and keys.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("failed to {action}")]
    Rcgen {
        action: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("invalid DNS name {name:?} for a certificate")]
    InvalidDnsName { name: String },
    #[error("invalid PEM certificate: {0}")]
    InvalidPem(String),
    #[error("the system random number generator failed")]
    Random,
}

fn rcgen_error(action: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Rcgen { action, source }
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct CertifiedKey {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Names, addresses and usages of one leaf certificate.
#[derive(Debug, Clone, Default)]
pub struct LeafProfile {
    pub common_name: String,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    /// Adds the TLS server authentication extended key usage.
    pub server_auth: bool,
    /// Adds the TLS client authentication extended key usage.
    pub client_auth: bool,
}

impl LeafProfile {
    /// Profile with `localhost`, 127.0.0.1 and the node's Tailscale address and MagicDNS
    /// name added to `names`.
    pub fn for_node(
        common_name: &str,
        names: &[&str],
        tailscale_ip: IpAddr,
        dns_name: &str,
    ) -> Self {
        let mut dns_names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        dns_names.push("localhost".to_owned());
        if !dns_name.is_empty() {
            dns_names.push(dns_name.to_owned());
        }
        dns_names.dedup();

        let mut ip_addresses = vec![IpAddr::from([127, 0, 0, 1])];
        if !ip_addresses.contains(&tailscale_ip) {
            ip_addresses.push(tailscale_ip);
        }

        Self {
            common_name: common_name.to_owned(),
            dns_names,
            ip_addresses,
            server_auth: false,
            client_auth: false,
        }
    }

    pub fn server(mut self) -> Self {
        self.server_auth = true;
        self
    }

    pub fn client(mut self) -> Self {
        self.client_auth = true;
        self
    }

    fn to_params(&self) -> Result<CertificateParams, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, self.common_name.as_str());
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Styx");

        for name in &self.dns_names {
            let ia5 = name
                .as_str()
                .try_into()
                .map_err(|_| PkiError::InvalidDnsName { name: name.clone() })?;
            params.subject_alt_names.push(SanType::DnsName(ia5));
        }
        for ip in &self.ip_addresses {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }

        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if self.server_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if self.client_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, LEAF_VALIDITY)?;
        Ok(params)
    }
}

fn set_validity(params: &mut CertificateParams, validity: Duration) -> Result<(), PkiError> {
    // Back-date by an hour so that a peer whose clock is slightly behind accepts it.
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + validity;
    params.serial_number = Some(random_serial()?);
    Ok(())
}

fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = random_bytes::<16>()?;
    // A serial number is a positive integer, so the top bit stays clear.
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

/// The cluster certificate authority with its signing key.
pub struct Authority {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Authority {
    /// Creates a new self-signed authority named after the cluster's region.
    pub fn generate(region: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate().map_err(rcgen_error("generate the CA key"))?;

        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Styx CA {region}"));
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Styx");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_VALIDITY)?;

        let cert = params
            .self_signed(&key)
            .map_err(rcgen_error("self-sign the CA certificate"))?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads an authority from its PEM certificate and PEM private key.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(rcgen_error("parse the CA key"))?;
        let cert_der = parse_cert_pem(cert_pem)?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(rcgen_error("parse the CA certificate"))?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            cert_der,
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// SHA-256 of the CA certificate's DER, in lowercase hex.
    pub fn fingerprint(&self) -> String {
        sha256_hex(&self.cert_der)
    }

    /// Generates a key pair and a certificate for `profile`, signed by this authority.
    pub fn issue(&self, profile: &LeafProfile) -> Result<CertifiedKey, PkiError> {
        let key = KeyPair::generate().map_err(rcgen_error("generate a key"))?;
        let cert = profile
            .to_params()?
            .signed_by(&key, &self.issuer)
            .map_err(rcgen_error("sign a certificate"))?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs the public key of a PEM certificate signing request with the names and
    /// usages of `profile`.
    ///
    /// Only the public key is taken from the request, after its signature is verified.
    /// The names it requests are ignored, so a joiner cannot obtain a server name.
    pub fn sign_request(&self, csr_pem: &str, profile: &LeafProfile) -> Result<String, PkiError> {
        let request = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(rcgen_error("verify the certificate signing request"))?;
        let cert = profile
            .to_params()?
            .signed_by(&request.public_key, &self.issuer)
            .map_err(rcgen_error("sign the certificate signing request"))?;
        Ok(cert.pem())
    }
}

/// Generates a key pair and a PEM certificate signing request naming `common_name`.
pub fn create_request(common_name: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate().map_err(rcgen_error("generate a key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let request = params
        .serialize_request(&key)
        .map_err(rcgen_error("create a certificate signing request"))?;
    let request_pem = request
        .pem()
        .map_err(rcgen_error("encode the certificate signing request"))?;
    Ok((request_pem, key.serialize_pem()))
}

/// Parses the first certificate of a PEM text.
pub fn parse_cert_pem(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|error| PkiError::InvalidPem(error.to_string()))
}

/// SHA-256 of `bytes` in lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Returns `N` bytes from the operating system's random number generator.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], PkiError> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Random)?;
    Ok(bytes)
}

/// Generates a gossip encryption key: 32 random bytes (AES-256), base64 encoded, the
/// form that `consul keygen` and `nomad operator gossip keyring generate` print.
pub fn gossip_key() -> Result<String, PkiError> {
    Ok(STANDARD.encode(random_bytes::<32>()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gossip_key_is_32_bytes() {
        let key = gossip_key().unwrap();

        let decoded = STANDARD.decode(key.as_bytes()).unwrap();

        assert_eq!(decoded.len(), 32);
        assert_ne!(gossip_key().unwrap(), key, "two keys must differ");
    }

    #[test]
    fn authority_round_trips_through_pem() {
        let authority = Authority::generate("global").unwrap();

        let loaded = Authority::load(authority.cert_pem(), &authority.key_pem()).unwrap();

        assert_eq!(loaded.fingerprint(), authority.fingerprint());
        assert_eq!(authority.fingerprint().len(), 64);
    }

    #[test]
    fn sign_request_ignores_requested_names() {
        let authority = Authority::generate("global").unwrap();
        let (request_pem, _key) = create_request("server.global.nomad").unwrap();
        let profile = LeafProfile::for_node(
            "client.global.nomad",
            &["client.global.nomad"],
            "100.64.0.2".parse().unwrap(),
            "",
        )
        .client();

        let cert_pem = authority.sign_request(&request_pem, &profile).unwrap();

        let der = parse_cert_pem(&cert_pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let subject = cert.subject().to_string();
        assert!(subject.contains("client.global.nomad"), "{subject}");
    }
}

//! A throwaway certificate authority and a server certificate for `127.0.0.1` / `localhost`.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::Error;

/// The CA that signed a TLS upstream's certificate. Trust it (and only it) in the client.
///
/// The server certificate names `127.0.0.1`, `::1` and `localhost`.
#[derive(Debug, Clone)]
pub struct TestCa {
    pem: String,
    der: CertificateDer<'static>,
}

impl TestCa {
    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// A root store holding only this CA.
    pub fn root_store(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.der.clone())
            .expect("rcgen produced a CA certificate webpki can parse");
        roots
    }

    /// A rustls client configuration (ring provider) trusting only this CA, offering ALPN
    /// `h2` then `http/1.1`. Set `alpn_protocols` to offer something else.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default TLS versions")
            .with_root_certificates(self.root_store())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(what: &str) -> impl Fn(rcgen::Error) -> Error + '_ {
    move |e| Error::Tls(format!("{what}: {e}"))
}

/// A CA and a server certificate it signed, with the server's key.
pub(crate) struct Issued {
    pub ca: TestCa,
    /// Server certificate, then the CA's.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: KeyPair,
    /// The server certificate, PEM.
    pub cert_pem: String,
}

/// Generates a CA and a server certificate, and the server configuration serving it with
/// ALPN `h2` and `http/1.1`.
pub(crate) fn generate() -> Result<(TestCa, Arc<ServerConfig>), Error> {
    let Issued { ca, chain, key, .. } = issue()?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(format!("TLS versions: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| Error::Tls(format!("server certificate rejected by rustls: {e}")))?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((ca, Arc::new(server)))
}

/// Generates a CA and a server certificate for `localhost`, `127.0.0.1` and `::1`.
pub(crate) fn issue() -> Result<Issued, Error> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls_err("CA"))?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "tollgate testkit CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().map_err(tls_err("CA key"))?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(tls_err("CA"))?;
    let issuer = Issuer::new(ca_params, ca_key);

    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let mut params = CertificateParams::new(names).map_err(tls_err("server certificate"))?;
    params
        .distinguished_name
        .push(DnType::CommonName, "tollgate testkit upstream");
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().map_err(tls_err("server key"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(tls_err("server certificate"))?;

    Ok(Issued {
        ca: TestCa {
            pem: ca_cert.pem(),
            der: ca_cert.der().clone(),
        },
        chain: vec![cert.der().clone(), ca_cert.der().clone()],
        key,
        cert_pem: cert.pem(),
    })
}

//! Optional TLS on both ports. On one host one certificate is enough: a self-signed certificate
//! for `localhost` and 127.0.0.1, kept with the secrets (`tls.pem` in the auth dir, created at
//! first use), which every node serves and every replica and client trusts.

use std::net::SocketAddr;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// The name the certificate is for, and that clients check.
const SERVER_NAME: &str = "localhost";

/// The PEM marker where the key starts in `tls.pem` (the certificate comes first).
const KEY_MARKER: &str = "-----BEGIN PRIVATE KEY-----";

/// A node's certificate and private key, in PEM.
#[derive(Clone)]
pub struct ServerTls {
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls(..)")
    }
}

impl ServerTls {
    /// A new self-signed certificate for `localhost` and 127.0.0.1.
    ///
    /// # Errors
    /// The key or the certificate could not be made.
    pub fn generate() -> Result<Self, String> {
        let names = vec![SERVER_NAME.to_string(), "127.0.0.1".to_string()];
        let made = rcgen::generate_simple_self_signed(names).map_err(|e| e.to_string())?;
        Ok(Self {
            cert_pem: made.cert.pem(),
            key_pem: made.signing_key.serialize_pem(),
        })
    }

    /// The certificate, then the key, as `tls.pem` holds them.
    pub fn to_pem(&self) -> String {
        format!("{}{}", self.cert_pem, self.key_pem)
    }

    /// Reads what [`Self::to_pem`] wrote.
    ///
    /// # Errors
    /// The text is not a certificate followed by a private key.
    pub fn from_pem(text: &str) -> Result<Self, String> {
        let at = text
            .find(KEY_MARKER)
            .ok_or("no private key (expected a certificate, then a PKCS#8 key)")?;
        let (cert, key) = text.split_at(at);
        if !cert.contains("-----BEGIN CERTIFICATE-----") {
            return Err("no certificate before the key".into());
        }
        Ok(Self {
            cert_pem: cert.to_string(),
            key_pem: key.to_string(),
        })
    }

    /// What a node serves.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new().identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }

    /// What a replica or client that trusts this certificate dials with.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.cert_pem))
            .domain_name(SERVER_NAME)
    }
}

/// The endpoint for `addr`: plain HTTP/2, or TLS that trusts `tls`'s certificate.
///
/// # Errors
/// The address or the TLS configuration is unusable.
pub fn endpoint(addr: SocketAddr, tls: Option<&ServerTls>) -> Result<Endpoint, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint =
        Endpoint::from_shared(format!("{scheme}://{addr}")).map_err(|e| e.to_string())?;
    match tls {
        Some(t) => endpoint
            .tls_config(t.client_config())
            .map_err(|e| e.to_string()),
        None => Ok(endpoint),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_certificate_reads_back_from_its_file_text() {
        let made = ServerTls::generate().unwrap();
        let back = ServerTls::from_pem(&made.to_pem()).unwrap();
        assert_eq!(back.to_pem(), made.to_pem());
        assert!(ServerTls::from_pem(&made.cert_pem).is_err());
        assert!(ServerTls::from_pem(&made.key_pem).is_err());
    }
}

//! rustls configuration for mutual TLS between replicas, on the ring
//! provider only (chosen explicitly; the process-wide default provider is
//! never consulted, so another crate installing aws-lc cannot change ours).
//!
//! Both directions verify the peer's chain against the cluster CA:
//! - outbound, rustls checks that the server certificate names
//!   `replica-<expected id>.paxos` (the server name we dial);
//! - inbound, rustls checks the client chain, and after the peer's hello
//!   [`PeerVerifier::verify`] checks that the certificate names the id the
//!   hello claims.

use crate::certs::{replica_dns_name, CertError, NodeIdentity};
use paxos_core::ReplicaId;
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::Arc;

/// ALPN protocol id: a peer speaking anything else is refused in the handshake.
pub const ALPN: &[u8] = b"paxos-net/1";

/// The ring crypto provider, explicitly.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn root_store(ca: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, CertError> {
    let mut roots = RootCertStore::empty();
    for cert in ca {
        roots
            .add(cert.clone())
            .map_err(|e| CertError::Tls(format!("bad CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// The rustls server side: our certificate, and client certificates required
/// and verified against the cluster CA.
pub(crate) fn rustls_server_config(
    identity: &NodeIdentity,
) -> Result<rustls::ServerConfig, CertError> {
    let provider = provider();
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(root_store(&identity.ca)?, provider.clone())
            .build()
            .map_err(|e| CertError::Tls(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| CertError::Tls(e.to_string()))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(identity.cert_chain.clone(), identity.key.clone_key())
        .map_err(|e| {
            CertError::Tls(format!(
                "certificate and key do not match or are unusable: {e}"
            ))
        })?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The rustls client side: server certificates verified against the cluster
/// CA (and the dialled replica's name), and our certificate presented.
pub(crate) fn rustls_client_config(
    identity: &NodeIdentity,
) -> Result<rustls::ClientConfig, CertError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| CertError::Tls(e.to_string()))?
        .with_root_certificates(root_store(&identity.ca)?)
        .with_client_auth_cert(identity.cert_chain.clone(), identity.key.clone_key())
        .map_err(|e| {
            CertError::Tls(format!(
                "certificate and key do not match or are unusable: {e}"
            ))
        })?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// Checks that a certificate chain, presented by a peer, chains to the
/// cluster CA and names a given replica.
#[derive(Debug, Clone)]
pub(crate) struct PeerVerifier {
    verifier: Arc<WebPkiServerVerifier>,
}

impl PeerVerifier {
    pub(crate) fn new(ca: &[CertificateDer<'static>]) -> Result<Self, CertError> {
        let verifier = WebPkiServerVerifier::builder_with_provider(root_store(ca)?, provider())
            .build()
            .map_err(|e| CertError::Tls(e.to_string()))?;
        Ok(PeerVerifier { verifier })
    }

    /// `Ok` if `chain` is valid now, chains to the CA and names replica `id`.
    ///
    /// Node certificates carry the serverAuth usage whichever side presents
    /// them, so the server-certificate checks apply to both directions.
    pub(crate) fn verify(
        &self,
        chain: &[CertificateDer<'static>],
        id: ReplicaId,
    ) -> Result<(), rustls::Error> {
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or(rustls::Error::NoCertificatesPresented)?;
        let name = ServerName::try_from(replica_dns_name(id))
            .map_err(|e| rustls::Error::General(format!("invalid replica name: {e}")))?;
        self.verifier
            .verify_server_cert(leaf, intermediates, &name, &[], UnixTime::now())
            .map(|_| ())
    }
}

/// The certificate chain a QUIC peer presented, if any.
pub(crate) fn peer_chain(connection: &quinn::Connection) -> Option<Vec<CertificateDer<'static>>> {
    connection
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()
        .map(|chain| *chain)
}

/// The key quinn uses to make stateless-reset tokens, derived from the
/// node's private key so that it survives restarts.
///
/// Why: when a replica crashes and restarts, its peers' old connection to it
/// would otherwise linger until the idle timeout. With the same reset key,
/// the restarted endpoint answers the first packet of the old connection
/// with a valid stateless reset, and the peer reconnects at once. The key is
/// as secret as the private key it comes from.
pub(crate) fn stateless_reset_key(identity: &NodeIdentity) -> ring::hmac::Key {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(b"paxos-net stateless reset key v1");
    context.update(identity.key.secret_der());
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, context.finish().as_ref())
}

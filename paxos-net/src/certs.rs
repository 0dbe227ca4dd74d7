//! Cluster certificates: a cluster CA and one certificate per replica.
//!
//! A replica's identity is the DNS subject alternative name
//! `replica-<id>.paxos` in its certificate ([`replica_dns_name`]). Node
//! certificates carry both the serverAuth and clientAuth extended key usages,
//! because every replica is both a QUIC client (to higher ids) and a server.
//!
//! Files written by [`generate_cluster`] into one directory:
//!
//! | file               | content                                         |
//! |--------------------|-------------------------------------------------|
//! | `ca.pem`           | the cluster CA certificate (give to every node) |
//! | `ca.key`           | the CA private key (keep offline; [`add_node`]) |
//! | `replica-<id>.pem` | node certificate                                |
//! | `replica-<id>.key` | node private key (PKCS#8, mode 0600)            |
//!
//! [`NodeIdentity::load`] reads a node's files back, checks that the
//! certificate chains to the CA and names the expected replica, and reports
//! missing or malformed files with the path in the error.

use paxos_core::ReplicaId;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::io::Write;
use std::path::{Path, PathBuf};

/// File name of the cluster CA certificate.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the cluster CA private key.
pub const CA_KEY_FILE: &str = "ca.key";

/// The DNS name that identifies replica `id` in its certificate.
pub fn replica_dns_name(id: ReplicaId) -> String {
    format!("replica-{}.paxos", id.0)
}

/// File name of replica `id`'s certificate.
pub fn node_cert_file(id: ReplicaId) -> String {
    format!("replica-{}.pem", id.0)
}

/// File name of replica `id`'s private key.
pub fn node_key_file(id: ReplicaId) -> String {
    format!("replica-{}.key", id.0)
}

/// Errors while generating, writing or loading certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A PEM file that is not valid PEM, or holds the wrong kind of object.
    #[error("{path}: not a valid PEM {what}: {detail}")]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What was expected ("certificate", "private key").
        what: &'static str,
        /// The parser's message.
        detail: String,
    },
    /// A certificate file without any certificate in it.
    #[error("{path}: no certificate found")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The certificate does not chain to the CA or does not name the replica.
    #[error("certificate for {id} is not valid for this cluster: {detail}")]
    InvalidForReplica {
        /// The replica the certificate was supposed to identify.
        id: ReplicaId,
        /// Why it is not accepted.
        detail: String,
    },
    /// Generating keys or certificates failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls rejected the certificate or key material.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// The list of replica ids has a duplicate.
    #[error("replica {0} listed twice")]
    DuplicateReplica(ReplicaId),
}

/// The certificate and key a replica presents, plus the CA it trusts.
#[derive(Debug)]
pub struct NodeIdentity {
    /// The replica these credentials identify.
    pub id: ReplicaId,
    /// The node certificate (first) and any intermediates.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The node's private key.
    pub key: PrivateKeyDer<'static>,
    /// The cluster CA certificates trusted for peers.
    pub ca: Vec<CertificateDer<'static>>,
}

impl Clone for NodeIdentity {
    fn clone(&self) -> Self {
        NodeIdentity {
            id: self.id,
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
            ca: self.ca.clone(),
        }
    }
}

impl NodeIdentity {
    /// Loads a node's certificate, key and CA from PEM files, and checks
    /// that the certificate chains to the CA and names replica `id`.
    pub fn load(
        id: ReplicaId,
        cert_path: &Path,
        key_path: &Path,
        ca_path: &Path,
    ) -> Result<Self, CertError> {
        let cert_chain = read_certs(cert_path)?;
        let ca = read_certs(ca_path)?;
        let key_pem = read_file(key_path)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| CertError::BadPem {
            path: key_path.to_owned(),
            what: "private key",
            detail: e.to_string(),
        })?;
        let identity = NodeIdentity {
            id,
            cert_chain,
            key,
            ca,
        };
        identity.check()?;
        Ok(identity)
    }

    /// Loads replica `id`'s files from a directory laid out by
    /// [`generate_cluster`].
    pub fn load_from_dir(dir: &Path, id: ReplicaId) -> Result<Self, CertError> {
        NodeIdentity::load(
            id,
            &dir.join(node_cert_file(id)),
            &dir.join(node_key_file(id)),
            &dir.join(CA_CERT_FILE),
        )
    }

    /// Checks that the certificate chains to the CA, names this replica,
    /// and matches the private key.
    pub fn check(&self) -> Result<(), CertError> {
        let verifier = crate::tls::PeerVerifier::new(&self.ca)?;
        verifier
            .verify(&self.cert_chain, self.id)
            .map_err(|e| CertError::InvalidForReplica {
                id: self.id,
                detail: e.to_string(),
            })?;
        // Building a server configuration checks that key and certificate match.
        crate::tls::rustls_server_config(self).map(|_| ())
    }
}

/// Paths of the files [`generate_cluster`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterFiles {
    /// The cluster CA certificate.
    pub ca_cert: PathBuf,
    /// The cluster CA private key.
    pub ca_key: PathBuf,
    /// Per replica: (id, certificate path, key path).
    pub nodes: Vec<NodeFiles>,
}

/// Paths of one replica's certificate and key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFiles {
    /// The replica.
    pub id: ReplicaId,
    /// Its certificate.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// Generates a cluster CA and a certificate per replica, in memory.
///
/// Returns the CA certificate and one identity per id, in the order given.
/// For tests and benchmarks; deployments use [`generate_cluster`].
pub fn generate_in_memory(
    ids: &[ReplicaId],
) -> Result<(CertificateDer<'static>, Vec<NodeIdentity>), CertError> {
    check_unique(ids)?;
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params().self_signed(&ca_key)?;
    let mut nodes = Vec::with_capacity(ids.len());
    for &id in ids {
        let (cert, key) = issue(&ca_cert, &ca_key, id)?;
        nodes.push(NodeIdentity {
            id,
            cert_chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            ca: vec![ca_cert.der().clone()],
        });
    }
    Ok((ca_cert.der().clone(), nodes))
}

/// Generates a cluster CA and a certificate per replica, and writes them as
/// PEM files into `dir` (created if missing). Private keys are written with
/// mode 0600. Existing files of the same names are replaced.
pub fn generate_cluster(dir: &Path, ids: &[ReplicaId]) -> Result<ClusterFiles, CertError> {
    check_unique(ids)?;
    std::fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params().self_signed(&ca_key)?;
    let ca_cert_path = dir.join(CA_CERT_FILE);
    let ca_key_path = dir.join(CA_KEY_FILE);
    write_file(&ca_cert_path, ca_cert.pem().as_bytes(), false)?;
    write_file(&ca_key_path, ca_key.serialize_pem().as_bytes(), true)?;
    let mut nodes = Vec::with_capacity(ids.len());
    for &id in ids {
        nodes.push(write_node(dir, &ca_cert, &ca_key, id)?);
    }
    Ok(ClusterFiles {
        ca_cert: ca_cert_path,
        ca_key: ca_key_path,
        nodes,
    })
}

/// Issues a certificate for a new replica `id` with the CA stored in `dir`
/// (for a replica added by reconfiguration).
pub fn add_node(dir: &Path, id: ReplicaId) -> Result<NodeFiles, CertError> {
    let ca_key_path = dir.join(CA_KEY_FILE);
    let pem = read_file(&ca_key_path)?;
    let pem = String::from_utf8(pem).map_err(|e| CertError::BadPem {
        path: ca_key_path.clone(),
        what: "private key",
        detail: e.to_string(),
    })?;
    let ca_key = KeyPair::from_pem(&pem).map_err(|e| CertError::BadPem {
        path: ca_key_path.clone(),
        what: "private key",
        detail: e.to_string(),
    })?;
    // Re-create the issuer from the same name and key: certificates it signs
    // verify against the stored CA certificate, which has that name and key.
    let ca_cert = ca_params().self_signed(&ca_key)?;
    write_node(dir, &ca_cert, &ca_key, id)
}

fn check_unique(ids: &[ReplicaId]) -> Result<(), CertError> {
    let mut seen = std::collections::BTreeSet::new();
    for &id in ids {
        if !seen.insert(id) {
            return Err(CertError::DuplicateReplica(id));
        }
    }
    Ok(())
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "paxos cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn issue(
    ca_cert: &Certificate,
    ca_key: &KeyPair,
    id: ReplicaId,
) -> Result<(Certificate, KeyPair), CertError> {
    let name = replica_dns_name(id);
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, name.clone());
    let dns = name.try_into().map_err(CertError::Generate)?;
    params.subject_alt_names = vec![SanType::DnsName(dns)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca_cert, ca_key)?;
    Ok((cert, key))
}

fn write_node(
    dir: &Path,
    ca_cert: &Certificate,
    ca_key: &KeyPair,
    id: ReplicaId,
) -> Result<NodeFiles, CertError> {
    let (cert, key) = issue(ca_cert, ca_key, id)?;
    let cert_path = dir.join(node_cert_file(id));
    let key_path = dir.join(node_key_file(id));
    write_file(&cert_path, cert.pem().as_bytes(), false)?;
    write_file(&key_path, key.serialize_pem().as_bytes(), true)?;
    Ok(NodeFiles {
        id,
        cert: cert_path,
        key: key_path,
    })
}

fn read_file(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Io {
        path: path.to_owned(),
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let pem = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::BadPem {
            path: path.to_owned(),
            what: "certificate",
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_cluster_loads_back_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let ids = [ReplicaId(1), ReplicaId(2), ReplicaId(3)];
        let files = generate_cluster(dir.path(), &ids).unwrap();
        assert_eq!(files.nodes.len(), 3);
        for id in ids {
            let identity = NodeIdentity::load_from_dir(dir.path(), id).unwrap();
            assert_eq!(identity.id, id);
            assert_eq!(identity.cert_chain.len(), 1);
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&files.nodes[0].key)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn loading_with_the_wrong_id_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        generate_cluster(dir.path(), &[ReplicaId(1), ReplicaId(2)]).unwrap();
        let err = NodeIdentity::load(
            ReplicaId(2),
            &dir.path().join(node_cert_file(ReplicaId(1))),
            &dir.path().join(node_key_file(ReplicaId(1))),
            &dir.path().join(CA_CERT_FILE),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                CertError::InvalidForReplica {
                    id: ReplicaId(2),
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn mismatched_key_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        generate_cluster(dir.path(), &[ReplicaId(1), ReplicaId(2)]).unwrap();
        let err = NodeIdentity::load(
            ReplicaId(1),
            &dir.path().join(node_cert_file(ReplicaId(1))),
            &dir.path().join(node_key_file(ReplicaId(2))),
            &dir.path().join(CA_CERT_FILE),
        )
        .unwrap_err();
        assert!(matches!(err, CertError::Tls(_)), "{err}");
    }

    #[test]
    fn certificate_from_another_cluster_is_rejected() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        generate_cluster(a.path(), &[ReplicaId(1)]).unwrap();
        generate_cluster(b.path(), &[ReplicaId(1)]).unwrap();
        let err = NodeIdentity::load(
            ReplicaId(1),
            &a.path().join(node_cert_file(ReplicaId(1))),
            &a.path().join(node_key_file(ReplicaId(1))),
            &b.path().join(CA_CERT_FILE),
        )
        .unwrap_err();
        assert!(matches!(err, CertError::InvalidForReplica { .. }), "{err}");
    }

    #[test]
    fn missing_and_malformed_files_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = NodeIdentity::load_from_dir(dir.path(), ReplicaId(1)).unwrap_err();
        assert!(
            matches!(&err, CertError::Io { path, .. } if path.ends_with("replica-1.pem")),
            "{err}"
        );

        generate_cluster(dir.path(), &[ReplicaId(1)]).unwrap();
        std::fs::write(dir.path().join(CA_CERT_FILE), b"not pem at all").unwrap();
        let err = NodeIdentity::load_from_dir(dir.path(), ReplicaId(1)).unwrap_err();
        assert!(
            matches!(&err, CertError::NoCertificate { path } if path.ends_with(CA_CERT_FILE)),
            "{err}"
        );

        std::fs::write(
            dir.path().join(CA_CERT_FILE),
            b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = NodeIdentity::load_from_dir(dir.path(), ReplicaId(1)).unwrap_err();
        assert!(
            matches!(
                &err,
                CertError::BadPem {
                    what: "certificate",
                    ..
                }
            ),
            "{err}"
        );

        std::fs::write(dir.path().join(node_key_file(ReplicaId(1))), b"").unwrap();
        let err = NodeIdentity::load(
            ReplicaId(1),
            &dir.path().join(node_cert_file(ReplicaId(1))),
            &dir.path().join(node_key_file(ReplicaId(1))),
            &dir.path().join(node_cert_file(ReplicaId(1))),
        )
        .unwrap_err();
        assert!(
            matches!(
                &err,
                CertError::BadPem {
                    what: "private key",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn add_node_signs_with_the_stored_ca() {
        let dir = tempfile::tempdir().unwrap();
        generate_cluster(dir.path(), &[ReplicaId(1)]).unwrap();
        let files = add_node(dir.path(), ReplicaId(4)).unwrap();
        assert_eq!(files.id, ReplicaId(4));
        NodeIdentity::load_from_dir(dir.path(), ReplicaId(4)).unwrap();
    }

    #[test]
    fn duplicate_ids_are_rejected() {
        let err = generate_in_memory(&[ReplicaId(1), ReplicaId(1)]).unwrap_err();
        assert!(matches!(err, CertError::DuplicateReplica(ReplicaId(1))));
    }
}

//! The one set of trusted certificates that HTTPS, S3 and FTPS share, checked by rustls
//! with the ring provider (it builds in a quarter of aws-lc's time on two cores): the
//! system's roots (what `rustls-native-certs` finds: `SSL_CERT_FILE`/`SSL_CERT_DIR` or the
//! distribution's store, the same roots the platform verifier uses on Linux) plus any
//! `--ca-file`. FTPS takes them as a rustls [`ClientConfig`], HTTP (ureq) as root
//! certificates.

use anyhow::{anyhow, bail, Context, Result};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::path::Path;
use std::sync::Arc;

/// Makes ring the process-wide rustls provider: ureq (built without a provider of its own)
/// takes the process's when it first opens a TLS connection, and panics without one.
pub fn install_provider() {
    // Fails only when a provider is installed already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The trusted roots: `ca_file`'s (PEM, one or more; each must be a usable CA certificate)
/// and the system's. Unreadable system certificates are skipped, as the platform verifier
/// does; an empty result is an error, since nothing could be trusted.
pub fn trusted_roots(ca_file: Option<&Path>) -> Result<Vec<CertificateDer<'static>>> {
    install_provider();
    let mut roots = match ca_file {
        None => Vec::new(),
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| anyhow!("{e}"))
                .with_context(|| format!("cannot read CA certificates from {}", path.display()))?;
            if certs.is_empty() {
                bail!(
                    "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                    path.display()
                );
            }
            let mut check = RootCertStore::empty();
            for cert in &certs {
                check.add(cert.clone()).with_context(|| {
                    format!("{} holds a certificate rustls cannot use", path.display())
                })?;
            }
            certs
        }
    };
    roots.extend(rustls_native_certs::load_native_certs().certs);
    if roots.is_empty() {
        bail!(
            "no trusted certificates: the system has none (install ca-certificates) and no \
             --ca-file was given"
        );
    }
    Ok(roots)
}

/// The client configuration for FTPS; `ca_file` adds trusted roots (see [`trusted_roots`]).
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>> {
    let mut store = RootCertStore::empty();
    store.add_parsable_certificates(trusted_roots(ca_file)?);
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("cannot set up TLS")?
            .with_root_certificates(store)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

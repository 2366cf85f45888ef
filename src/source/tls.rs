//! The one TLS client configuration that HTTPS and FTPS share: rustls with the ring
//! provider (it builds in a quarter of aws-lc's time on two cores), certificates checked by
//! the platform verifier against the system's roots plus any `--ca-file`.

use anyhow::{anyhow, Context, Result};
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::path::Path;
use std::sync::Arc;

/// Makes ring the process-wide rustls provider. reqwest (built without a provider of its
/// own) asks for it when a client is built, even for plain HTTP, and panics without one.
pub fn install_provider() {
    // Fails only when a provider is installed already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Builds the client configuration; `ca_file` adds trusted roots (PEM, one or more).
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>> {
    install_provider();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let extra: Vec<CertificateDer<'static>> = match ca_file {
        None => Vec::new(),
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| anyhow!("{e}"))
                .with_context(|| format!("cannot read CA certificates from {}", path.display()))?;
            if certs.is_empty() {
                return Err(anyhow!(
                    "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                    path.display()
                ));
            }
            certs
        }
    };
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
            .context("cannot set up TLS certificate checks")?;
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("cannot set up TLS")?
        .dangerous() // not dangerous: the platform verifier is a full verifier
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

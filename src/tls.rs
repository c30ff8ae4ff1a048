//! TLS setup: the dependency tree enables both of rustls's crypto back-ends, so the process picks
//! one explicitly before any TLS connection is made.

/// Installs ring as the process-wide rustls crypto provider (idempotent).
pub fn install_crypto_provider() {
    // Err means a provider is already installed: fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

//! TLS files: a cheap check that a certificate and key are a usable PEM pair, so a bad pair is
//! refused by `check` and by reload like any other mistake.

use std::path::Path;

/// Checks that `cert` holds at least one PEM certificate and `key` a PEM private key.
pub fn check_pair(cert: &Path, key: &Path) -> Result<(), String> {
    let cert_pem = std::fs::read_to_string(cert).map_err(|e| format!("{}: {e}", cert.display()))?;
    let key_pem = std::fs::read_to_string(key).map_err(|e| format!("{}: {e}", key.display()))?;
    if !cert_pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!("{} holds no PEM certificate", cert.display()));
    }
    if !key_pem.contains("PRIVATE KEY-----") {
        return Err(format!("{} holds no PEM private key", key.display()));
    }
    Ok(())
}

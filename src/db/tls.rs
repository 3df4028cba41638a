//! TLS for connections, with libpq's `sslmode` meanings (tokio-postgres alone knows only
//! disable/prefer/require and cannot verify without a connector):
//!
//! - no `sslmode`, or `disable`: plain TCP, like node-postgres and postgres.js by default;
//! - `prefer` / `require`: encrypted, the server's certificate not checked (as libpq does
//!   without a root certificate) — protects against eavesdropping, not impersonation;
//! - `verify-ca` / `verify-full`: encrypted and the certificate verified against Mozilla's roots
//!   (webpki-roots) plus `sslrootcert` (a PEM file) if given, including the host name (so
//!   `verify-ca` is as strict as `verify-full`).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{QuotaError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
  /// Plain TCP.
  None,
  /// Encrypted, certificate not checked.
  EncryptOnly { required: bool },
  /// Encrypted, certificate and host name verified.
  Full,
}

/// The TLS settings of a connection string, and the string without the parameters that
/// tokio-postgres does not understand.
#[derive(Debug, Clone)]
pub struct TlsSettings {
  pub verification: Verification,
  pub root_cert: Option<String>,
  pub url: String,
}

/// Reads `sslmode` and `sslrootcert` from a URL-style connection string. Key=value strings are
/// passed through for tokio-postgres to read (disable/prefer/require).
pub fn settings_from_url(url: &str) -> Result<TlsSettings> {
  let bad = || {
    QuotaError::unavailable("sslmode must be disable, prefer, require, verify-ca or verify-full")
  };
  let Some((base, query)) = url.split_once('?') else {
    return Ok(TlsSettings {
      verification: Verification::None,
      root_cert: None,
      url: url.to_owned(),
    });
  };
  let mut verification = Verification::None;
  let mut root_cert = None;
  let mut kept = Vec::new();
  for pair in query.split('&').filter(|p| !p.is_empty()) {
    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
    match key {
      "sslmode" => {
        verification = match value {
          "disable" | "allow" => Verification::None,
          "prefer" => Verification::EncryptOnly { required: false },
          "require" => Verification::EncryptOnly { required: true },
          "verify-ca" | "verify-full" => Verification::Full,
          _ => return Err(bad()),
        }
      }
      "sslrootcert" => root_cert = Some(percent_decode(value)),
      _ => kept.push(pair),
    }
  }
  let url = if kept.is_empty() {
    base.to_owned()
  } else {
    format!("{base}?{}", kept.join("&"))
  };
  Ok(TlsSettings {
    verification,
    root_cert,
    url,
  })
}

fn percent_decode(value: &str) -> String {
  let bytes = value.as_bytes();
  let mut out = Vec::with_capacity(bytes.len());
  let mut i = 0;
  while i < bytes.len() {
    if bytes[i] == b'%' && i + 2 < bytes.len() {
      let hex = |b: u8| (b as char).to_digit(16);
      if let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
        out.push((high * 16 + low) as u8);
        i += 3;
        continue;
      }
    }
    out.push(bytes[i]);
    i += 1;
  }
  String::from_utf8_lossy(&out).into_owned()
}

impl TlsSettings {
  pub fn ssl_mode(&self) -> SslMode {
    match self.verification {
      Verification::None => SslMode::Disable,
      Verification::EncryptOnly { required: false } => SslMode::Prefer,
      Verification::EncryptOnly { required: true } | Verification::Full => SslMode::Require,
    }
  }

  /// The connector for these settings (unused by tokio-postgres when TLS is disabled).
  pub fn connector(&self) -> Result<MakeRustlsConnect> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
      .with_safe_default_protocol_versions()
      .map_err(|e| QuotaError::Internal(format!("TLS setup failed: {e}")))?;
    let config = match self.verification {
      Verification::Full => builder
        .with_root_certificates(self.root_store()?)
        .with_no_client_auth(),
      Verification::None | Verification::EncryptOnly { .. } => builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
        .with_no_client_auth(),
    };
    Ok(MakeRustlsConnect::new(config))
  }

  fn root_store(&self) -> Result<RootCertStore> {
    let mut roots = RootCertStore {
      roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = &self.root_cert {
      let pem = std::fs::read(path)
        .map_err(|e| QuotaError::unavailable(format!("cannot read sslrootcert {path}: {e}")))?;
      let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| QuotaError::unavailable(format!("sslrootcert {path} is not PEM: {e}")))?;
      if certs.is_empty() {
        return Err(QuotaError::unavailable(format!(
          "sslrootcert {path} holds no certificate"
        )));
      }
      for cert in certs {
        roots.add(cert).map_err(|e| {
          QuotaError::unavailable(format!(
            "sslrootcert {path} has an unusable certificate: {e}"
          ))
        })?;
      }
    }
    Ok(roots)
  }
}

/// `sslmode=prefer|require`: the session is encrypted and the handshake signature checked, but
/// the certificate chain is not (libpq's behaviour without a root certificate).
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
  fn verify_server_cert(
    &self,
    _end_entity: &CertificateDer<'_>,
    _intermediates: &[CertificateDer<'_>],
    _server_name: &ServerName<'_>,
    _ocsp: &[u8],
    _now: UnixTime,
  ) -> std::result::Result<ServerCertVerified, rustls::Error> {
    Ok(ServerCertVerified::assertion())
  }

  fn verify_tls12_signature(
    &self,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
  ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
    verify_tls12_signature(
      message,
      cert,
      dss,
      &self.0.signature_verification_algorithms,
    )
  }

  fn verify_tls13_signature(
    &self,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
  ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
    verify_tls13_signature(
      message,
      cert,
      dss,
      &self.0.signature_verification_algorithms,
    )
  }

  fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
    self.0.signature_verification_algorithms.supported_schemes()
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn strips_what_tokio_postgres_cannot_read() {
    let s = settings_from_url("postgres://u:p@db:5432/app?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x").unwrap();
    assert_eq!(s.verification, Verification::Full);
    assert_eq!(s.root_cert.as_deref(), Some("/etc/ca.pem"));
    assert_eq!(s.url, "postgres://u:p@db:5432/app?application_name=x");
    assert_eq!(s.ssl_mode(), SslMode::Require);
  }

  #[test]
  fn defaults_to_plain_tcp_and_refuses_unknown_modes() {
    let plain = settings_from_url("postgres://u@db/app").unwrap();
    assert_eq!(plain.verification, Verification::None);
    assert_eq!(plain.ssl_mode(), SslMode::Disable);
    assert_eq!(
      settings_from_url("postgres://u@db/app?sslmode=require")
        .unwrap()
        .verification,
      Verification::EncryptOnly { required: true }
    );
    assert!(settings_from_url("postgres://u@db/app?sslmode=sometimes").is_err());
    // Malformed or multi-byte escapes never panic.
    assert_eq!(percent_decode("%é%2"), "%é%2");
    assert_eq!(percent_decode("a%2Fb"), "a/b");
  }
}

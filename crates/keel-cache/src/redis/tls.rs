//! TLS settings ([`TlsOptions`]): custom CA, client certificates.

use super::*;

/// TLS settings. A `rediss://` URL turns TLS on by itself; `enabled` does it for
/// `host`/`port` and Cluster seeds given as `host:port`.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// Use TLS.
    pub enabled: bool,
    /// PEM file of the CA to trust instead of the system roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    pub cert_file: Option<std::path::PathBuf>,
    /// Client key (PEM) for mutual TLS.
    pub key_file: Option<std::path::PathBuf>,
}

impl TlsOptions {
    pub(super) fn has_files(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }

    #[cfg(feature = "redis-tls")]
    pub(super) fn certificates(&self) -> Result<Option<redis::TlsCertificates>> {
        if !self.has_files() {
            return Ok(None);
        }
        let read = |field: &str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| Error::InvalidConfig {
                field: format!("options.{field}"),
                reason: format!("cannot read {}: {e}", path.display()),
            })
        };
        let client_tls = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read("tls_cert_file", cert)?,
                client_key: read("tls_key_file", key)?,
            }),
            (None, None) => None,
            _ => {
                return Err(Error::InvalidConfig {
                    field: "options.tls_cert_file".into(),
                    reason: "a client certificate needs both tls_cert_file and tls_key_file".into(),
                });
            }
        };
        let root_cert = match &self.ca_file {
            Some(ca) => Some(read("tls_ca_file", ca)?),
            None => None,
        };
        Ok(Some(redis::TlsCertificates {
            client_tls,
            root_cert,
        }))
    }
}

/// Opens a standalone client, with the TLS material when there is any.
pub(super) fn single_client(info: redis::ConnectionInfo, tls: &TlsOptions) -> Result<Client> {
    let bad = |e: RedisError| Error::InvalidConfig {
        field: "url".into(),
        reason: crate::config::redact_urls(&e.to_string()),
    };
    #[cfg(feature = "redis-tls")]
    if let Some(certs) = tls.certificates()? {
        return Client::build_with_tls(info, certs).map_err(bad);
    }
    #[cfg(not(feature = "redis-tls"))]
    if tls.enabled || tls.has_files() {
        return Err(no_tls());
    }
    Client::open(info).map_err(bad)
}

#[cfg(not(feature = "redis-tls"))]
pub(super) fn no_tls() -> Error {
    Error::InvalidConfig {
        field: "options.tls".into(),
        reason: "this build of keel-cache has no TLS (enable the `redis-tls` feature)".into(),
    }
}

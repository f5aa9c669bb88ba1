//! The Redis backend over TLS against a TLS-only redis-server with a throwaway CA.
#![cfg(feature = "redis-tls")]

use keel_cache::{CacheConfig, Error, Ttl};
use keel_testkit::redis::{RedisServer, TlsFiles};

fn config(extra: &str) -> CacheConfig {
    CacheConfig::from_toml(&format!("type = \"redis\"\nname = \"tls\"\n{extra}")).unwrap()
}

#[tokio::test]
async fn rediss_url_with_a_custom_ca() {
    let tls = TlsFiles::generate();
    let redis = RedisServer::start_tls(&tls, false);
    let cfg = config(&format!(
        "url = \"rediss://127.0.0.1:{}\"\n[options]\ntls_ca_file = \"{}\"\n",
        redis.port(),
        tls.ca_cert.display()
    ));
    let cache = keel_cache::open(&cfg).await.unwrap();
    cache.set("k", "over tls".into(), Ttl::Never).await.unwrap();
    assert_eq!(redis.cli(&["GET", "tls:k"]), "over tls");
    assert_eq!(
        cache.get("k").await.unwrap().as_deref(),
        Some(&b"over tls"[..])
    );
}

#[tokio::test]
async fn host_port_with_tls_on() {
    let tls = TlsFiles::generate();
    let redis = RedisServer::start_tls(&tls, false);
    let cfg = config(&format!(
        "host = \"127.0.0.1\"\nport = {}\n[options]\ntls = true\ntls_ca_file = \"{}\"\n",
        redis.port(),
        tls.ca_cert.display()
    ));
    let cache = keel_cache::open(&cfg).await.unwrap();
    assert_eq!(cache.incr_by("n", 2).await.unwrap(), 2);
}

#[tokio::test]
async fn an_untrusted_server_certificate_is_refused() {
    let tls = TlsFiles::generate();
    let redis = RedisServer::start_tls(&tls, false);
    // No CA given: the system roots do not know the throwaway CA.
    let cfg = config(&format!(
        "url = \"rediss://127.0.0.1:{}\"\n[options]\nconnect_timeout = \"2s\"\n",
        redis.port()
    ));
    let err = keel_cache::open(&cfg).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    // Plain TCP to a TLS port is refused too, not hung.
    let plain = config(&format!(
        "url = \"redis://127.0.0.1:{}\"\n[options]\nconnect_timeout = \"2s\"\n",
        redis.port()
    ));
    let err = keel_cache::open(&plain).await.unwrap_err();
    assert!(
        matches!(err, Error::Unavailable { .. } | Error::Timeout { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn mutual_tls_needs_the_client_certificate() {
    let tls = TlsFiles::generate();
    let redis = RedisServer::start_tls(&tls, true);
    let base = format!(
        "url = \"rediss://127.0.0.1:{}\"\n[options]\nconnect_timeout = \"2s\"\ntls_ca_file = \"{}\"\n",
        redis.port(),
        tls.ca_cert.display()
    );
    assert!(
        keel_cache::open(&config(&base)).await.is_err(),
        "no client certificate"
    );
    let with_cert = format!(
        "{base}tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
        tls.client_cert.display(),
        tls.client_key.display()
    );
    let cache = keel_cache::open(&config(&with_cert)).await.unwrap();
    cache.set("k", "mtls".into(), Ttl::Never).await.unwrap();
    assert_eq!(redis.cli(&["GET", "tls:k"]), "mtls");
    let half = format!("{base}tls_cert_file = \"{}\"\n", tls.client_cert.display());
    assert!(matches!(
        keel_cache::open(&config(&half)).await,
        Err(Error::InvalidConfig { .. })
    ));
    let missing = format!(
        "{base}tls_cert_file = \"/nonexistent.crt\"\ntls_key_file = \"/nonexistent.key\"\n"
    );
    let err = keel_cache::open(&config(&missing)).await.unwrap_err();
    assert!(err.to_string().contains("/nonexistent.crt"), "{err}");
}

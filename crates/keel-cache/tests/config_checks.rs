//! Config that cannot mislead: contradictions, fields of another backend, names that would
//! share keys, out-of-range numbers and secrets in output are errors or redacted at load.
#![cfg(feature = "redis")]

use std::time::Duration;

use keel_cache::{Cache, CacheConfig, Endpoint, Error, RedisCache, Secret, Ttl};
use keel_testkit::redis::RedisServer;

/// The `InvalidConfig` field `text` is rejected with (panics if it is accepted).
async fn rejected(text: &str) -> String {
    let config = CacheConfig::from_toml(text).unwrap();
    match keel_cache::open(&config).await {
        Err(Error::InvalidConfig { field, reason }) => {
            assert!(!reason.is_empty());
            field
        }
        Err(other) => panic!("{text}\n-> {other:?}"),
        Ok(_) => panic!("{text}\n-> accepted"),
    }
}

#[tokio::test]
async fn tls_settings_that_contradict_the_url_are_errors() {
    for text in [
        "type = \"redis\"\nname = \"a\"\nurl = \"redis://127.0.0.1:1\"\n[options]\ntls = true\n",
        "type = \"redis\"\nname = \"a\"\nurl = \"redis://127.0.0.1:1\"\n[options]\ntls_ca_file = \"/ca.pem\"\n",
        "type = \"redis\"\nname = \"a\"\nurl = \"rediss://127.0.0.1:1\"\n[options]\ntls = false\n",
        "type = \"redis\"\nname = \"a\"\nmode = \"cluster\"\nnodes = [\"redis://127.0.0.1:1\"]\n[options]\ntls = true\n",
        "type = \"redis\"\nname = \"a\"\nmode = \"cluster\"\nnodes = [\"redis://127.0.0.1:1\", \"rediss://127.0.0.1:2\"]\n",
    ] {
        assert_eq!(rejected(text).await, "options.tls", "{text}");
    }
}

#[tokio::test]
async fn fields_of_another_backend_are_errors() {
    for (text, field) in [
        ("type = \"memory\"\nurl = \"redis://h:1\"\n", "url"),
        ("type = \"memory\"\nprefix = \"p:\"\n", "prefix"),
        (
            "type = \"memory\"\n[options]\nresponse_timeout = \"1s\"\n",
            "options.response_timeout",
        ),
        (
            "type = \"redis\"\nname = \"a\"\n[options]\nmax_entries = 10\n",
            "options.max_entries",
        ),
        (
            "type = \"redis\"\nname = \"a\"\n[options]\nl1_ttl = \"5s\"\n",
            "options.l1_ttl",
        ),
        (
            "type = \"redis\"\nname = \"a\"\nsentinels = [\"h:1\"]\n",
            "sentinels",
        ),
        (
            "type = \"redis\"\nname = \"a\"\nnodes = [\"h:1\"]\n",
            "nodes",
        ),
        (
            "type = \"tiered\"\nname = \"a\"\nurl = \"redis://h:1\"\n[l2]\ntype = \"redis\"\n",
            "url",
        ),
        (
            "type = \"tiered\"\nname = \"a\"\n[l1]\ntype = \"memory\"\nhost = \"h\"\n[l2]\ntype = \"redis\"\n",
            "l1.host",
        ),
        (
            "type = \"tiered\"\nname = \"a\"\n[l2]\ntype = \"redis\"\n[l2.options]\nmax_bytes = 5\n",
            "l2.options.max_bytes",
        ),
    ] {
        assert_eq!(rejected(text).await, field, "{text}");
    }
}

#[tokio::test]
async fn a_url_never_silently_overrides_other_fields() {
    for (text, field) in [
        (
            "type = \"redis\"\nname = \"a\"\nurl = \"redis://h:1\"\npassword = \"p\"\n",
            "password",
        ),
        (
            "type = \"redis\"\nname = \"a\"\nurl = \"redis://h:1\"\ndatabase = 3\n",
            "database",
        ),
        (
            "type = \"redis\"\nname = \"a\"\nurl = \"redis://h:1\"\nusername = \"u\"\n",
            "username",
        ),
    ] {
        assert_eq!(rejected(text).await, field, "{text}");
    }
}

#[tokio::test]
async fn shared_caches_need_names_that_cannot_share_keys() {
    assert_eq!(
        rejected("type = \"redis\"\nurl = \"redis://127.0.0.1:1\"\n").await,
        "name",
        "no name: everyone's cache would be \"default\""
    );
    assert_eq!(
        rejected("type = \"tiered\"\n[l2]\ntype = \"redis\"\n").await,
        "name"
    );
    // `users:` is a prefix of `users:v2:`: such a name needs an explicit prefix.
    assert_eq!(
        rejected("type = \"redis\"\nname = \"users:v2\"\nurl = \"redis://127.0.0.1:1\"\n").await,
        "prefix"
    );
    let with_prefix = RedisCache::builder(
        "users:v2",
        Endpoint::Url(Secret::new("redis://127.0.0.1:1".to_owned())),
    )
    .prefix("users-v2:")
    .build();
    assert!(with_prefix.is_ok(), "{with_prefix:?}");
    // A memory cache is private to its process: no name is fine.
    let memory = keel_cache::open(&CacheConfig::from_toml("type = \"memory\"\n").unwrap())
        .await
        .unwrap();
    assert_eq!(memory.name(), "default");
}

#[tokio::test]
async fn numbers_out_of_range_are_errors_at_load() {
    for (text, field) in [
        (
            "type = \"redis\"\nname = \"a\"\n[options]\nresponse_timeout = \"100000000h\"\n",
            "options.response_timeout",
        ),
        (
            "type = \"redis\"\nname = \"a\"\n[options]\nconnect_timeout = \"100000000h\"\n",
            "options.connect_timeout",
        ),
        (
            "type = \"memory\"\n[options]\ndefault_ttl = \"200years\"\n",
            "options.default_ttl",
        ),
        (
            "type = \"tiered\"\nname = \"a\"\n[options]\nl1_ttl = \"0s\"\n[l2]\ntype = \"redis\"\n",
            "options.l1_ttl",
        ),
        (
            "type = \"tiered\"\nname = \"a\"\n[options]\nttl_jitter = \"150%\"\n[l2]\ntype = \"redis\"\n",
            "options.ttl_jitter",
        ),
        (
            "type = \"tiered\"\nname = \"a\"\n[options]\nttl_jitter = \"10\"\n[l2]\ntype = \"redis\"\n",
            "options.ttl_jitter",
        ),
        (
            "type = \"tiered\"\nname = \"a\"\n[options]\nstale_if_error = \"200years\"\n[l2]\ntype = \"redis\"\n",
            "options.stale_if_error",
        ),
        (
            "type = \"redis\"\nname = \"a\"\n[options]\nstale_if_error = \"30s\"\n",
            "options.stale_if_error",
        ),
        (
            "type = \"memory\"\n[options]\nttl_jitter = \"10%\"\n",
            "options.ttl_jitter",
        ),
    ] {
        assert_eq!(rejected(text).await, field, "{text}");
    }
}

/// A bad duration for `stale_if_error` is a parse error naming the input, not a panic.
#[test]
fn a_bad_stale_if_error_duration_is_a_parse_error() {
    let text = "type = \"tiered\"\nname = \"a\"\n[options]\nstale_if_error = \"soon\"\n[l2]\ntype = \"redis\"\n";
    assert!(matches!(
        CacheConfig::from_toml(text),
        Err(Error::Parse { message, .. }) if message.contains("soon")
    ));
}

/// A builder given an absurd response timeout neither panics nor hangs forever: it is cut to
/// the 1 h maximum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_response_timeout_does_not_panic() {
    let server = RedisServer::start();
    let cache = RedisCache::builder("a", Endpoint::Url(Secret::new(server.url())))
        .response_timeout(Duration::MAX)
        .items_refresh(None)
        .build()
        .unwrap();
    cache.connect().await.unwrap();
    cache.set("k", "v".into(), Ttl::Never).await.unwrap();
    assert_eq!(cache.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
}

#[tokio::test]
async fn secrets_never_show_in_debug_output_or_errors() {
    let cluster = RedisCache::builder(
        "a",
        Endpoint::Cluster {
            nodes: vec!["redis://user:hunter2@127.0.0.1:1".into()],
            username: None,
            password: None,
        },
    );
    let text = format!("{cluster:?}");
    assert!(!text.contains("hunter2"), "{text}");
    let sentinel = Endpoint::Sentinel {
        sentinels: vec!["redis://:hunter2@127.0.0.1:1".into()],
        master: "m".into(),
        username: None,
        password: Some(Secret::new("hunter2")),
        database: 0,
    };
    let text = format!("{sentinel:?}");
    assert!(!text.contains("hunter2"), "{text}");
    let config = CacheConfig::from_toml(
        "type = \"redis\"\nname = \"a\"\nurl = \"redis://:hunter2@127.0.0.1:1/x/y\"\n",
    )
    .unwrap();
    let e = keel_cache::open(&config).await.err().unwrap().to_string();
    assert!(!e.contains("hunter2"), "{e}");
}

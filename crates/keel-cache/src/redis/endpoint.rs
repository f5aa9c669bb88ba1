//! Where the server is ([`Endpoint`]), and the connection settings derived from it.

use super::*;

/// Where the server is. `Debug` shows no password, and no credentials inside URLs.
#[derive(Clone)]
pub enum Endpoint {
    /// A `redis://` or `rediss://` URL (may carry credentials; redacted in `Debug`).
    Url(Secret),
    /// Host and port with optional credentials and database.
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
        /// ACL user name.
        username: Option<String>,
        /// Password.
        password: Option<Secret>,
        /// Database number.
        database: i64,
    },
    /// A Redis Cluster, found through any of these seed nodes (`host:port` or URLs).
    Cluster {
        /// Seed nodes.
        nodes: Vec<String>,
        /// ACL user name.
        username: Option<String>,
        /// Password.
        password: Option<Secret>,
    },
    /// A master found through Redis Sentinel; the cache follows failovers.
    Sentinel {
        /// Sentinel addresses (`host:port` or URLs).
        sentinels: Vec<String>,
        /// The monitored master's name.
        master: String,
        /// ACL user name for the data nodes.
        username: Option<String>,
        /// Password for the data nodes.
        password: Option<Secret>,
        /// Database number.
        database: i64,
    },
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |list: &[String]| {
            list.iter()
                .map(|u| crate::config::redact_urls(u))
                .collect::<Vec<_>>()
        };
        match self {
            Endpoint::Url(url) => f.debug_tuple("Url").field(url).finish(),
            Endpoint::Tcp {
                host,
                port,
                username,
                password,
                database,
            } => f
                .debug_struct("Tcp")
                .field("host", host)
                .field("port", port)
                .field("username", username)
                .field("password", password)
                .field("database", database)
                .finish(),
            Endpoint::Cluster {
                nodes,
                username,
                password,
            } => f
                .debug_struct("Cluster")
                .field("nodes", &redacted(nodes))
                .field("username", username)
                .field("password", password)
                .finish(),
            Endpoint::Sentinel {
                sentinels,
                master,
                username,
                password,
                database,
            } => f
                .debug_struct("Sentinel")
                .field("sentinels", &redacted(sentinels))
                .field("master", master)
                .field("username", username)
                .field("password", password)
                .field("database", database)
                .finish(),
        }
    }
}

pub(super) fn node_url(node: &str) -> String {
    if node.contains("://") {
        node.to_owned()
    } else {
        format!("redis://{node}")
    }
}

pub(super) fn redis_settings(
    base: redis::RedisConnectionInfo,
    username: Option<&String>,
    password: Option<&Secret>,
    database: i64,
) -> redis::RedisConnectionInfo {
    let mut settings = base.set_db(database);
    if let Some(user) = username {
        settings = settings.set_username(user);
    }
    if let Some(pass) = password {
        settings = settings.set_password(pass.expose());
    }
    settings
}

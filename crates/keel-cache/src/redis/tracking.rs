//! The servers to run client tracking on (server-assisted L1 invalidation, see the tiered
//! cache): tracking is per server, so one client for the server, the Sentinel master, or every
//! Cluster master.

use super::*;

impl RedisCache {
    /// Clients, with the data path's credentials and TLS, for every server holding this cache's
    /// keys now: the server (the master in Sentinel mode), or every Cluster master serving
    /// slots (read from `CLUSTER NODES` on a seed node, the next seed in turn on each call).
    ///
    /// # Errors
    /// [`Error::Unavailable`] if no seed node answers.
    pub(crate) async fn tracking_clients(&self) -> Result<Vec<Client>> {
        let seed = self.pubsub_client().await?;
        if !self.is_cluster() {
            return Ok(vec![seed]);
        }
        let s = &self.shared;
        let unavailable = |reason: String| Error::Unavailable {
            cache: s.name.clone(),
            operation: "subscribe",
            reason: crate::config::redact_urls(&reason),
        };
        let nodes: String = tokio::time::timeout(s.connect_timeout, async {
            let mut conn = seed.get_multiplexed_async_connection().await?;
            redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async::<String>(&mut conn)
                .await
        })
        .await
        .map_err(|_| unavailable("CLUSTER NODES timed out".into()))?
        .map_err(|e| unavailable(e.to_string()))?;
        let info = seed.get_connection_info();
        let mut clients = Vec::new();
        for line in nodes.lines() {
            // <id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong> <epoch> <state> <slots>…
            let fields: Vec<&str> = line.split(' ').collect();
            let (Some(addr), Some(flags)) = (fields.get(1), fields.get(2)) else {
                continue;
            };
            let flags: Vec<&str> = flags.split(',').collect();
            if !flags.contains(&"master")
                || flags
                    .iter()
                    .any(|f| f.starts_with("fail") || *f == "noaddr")
                || fields.len() <= 8
            {
                continue; // a replica, a failed node, or a master without slots
            }
            let addr = addr.split(['@', ',']).next().unwrap_or_default();
            let Some((host, port)) = addr.rsplit_once(':') else {
                continue;
            };
            let Ok(port) = port.parse::<u16>() else {
                continue;
            };
            let mut node = info.addr().clone();
            match &mut node {
                ConnectionAddr::Tcp(h, p)
                | ConnectionAddr::TcpTls {
                    host: h, port: p, ..
                } => {
                    *h = host.to_owned();
                    *p = port;
                }
                _ => continue,
            }
            clients.push(
                Client::open(info.clone().set_addr(node))
                    .map_err(|e| unavailable(e.to_string()))?,
            );
        }
        if clients.is_empty() {
            return Err(unavailable(
                "CLUSTER NODES lists no master serving slots".into(),
            ));
        }
        Ok(clients)
    }
}

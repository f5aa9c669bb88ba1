//! The subscriber: one pub/sub connection per store, listening to the store's release
//! channel and waking this process's waiters by name.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use keel_cache::redis::Connection;
use tokio_util::sync::CancellationToken;

use crate::store::Wakeups;

/// Runs until `stop`: subscribe, forward messages, and after any failure wait a second and
/// subscribe again. Every (re)subscription wakes all waiters, since messages published while
/// it was down are lost (the waiters' polling covers that gap too).
pub(super) fn spawn(
    conn: Connection,
    channel: String,
    wakeups: Arc<Wakeups>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let bound = conn.response_timeout().saturating_mul(2);
        loop {
            let subscribed = async {
                let client = conn.pubsub_client().await.ok()?;
                let mut pubsub = client.get_async_pubsub().await.ok()?;
                pubsub.subscribe(&channel).await.ok()?;
                Some(pubsub)
            };
            let pubsub = tokio::select! {
                () = stop.cancelled() => return,
                p = tokio::time::timeout(bound, subscribed) => p.ok().flatten(),
            };
            if let Some(pubsub) = pubsub {
                wakeups.notify_all();
                let mut messages = pubsub.into_on_message();
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        msg = messages.next() => match msg {
                            Some(msg) => match std::str::from_utf8(msg.get_payload_bytes()) {
                                Ok(name) => wakeups.notify(name),
                                Err(_) => wakeups.notify_all(),
                            },
                            None => break,
                        },
                    }
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    });
}

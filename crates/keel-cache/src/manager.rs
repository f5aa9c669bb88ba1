//! A registry of named caches, safe to use from many tasks.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use crate::contract::Cache;
use crate::{Error, Result};

/// Named caches. Every method takes `&self`; the map is behind a lock that is never held
/// across an `.await`, so closing a slow cache cannot block `get` from other tasks.
#[derive(Debug, Default)]
pub struct Manager {
    caches: RwLock<BTreeMap<String, Arc<dyn Cache>>>,
}

impl Manager {
    /// An empty manager.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `cache` under its [`name`](Cache::name).
    ///
    /// # Errors
    /// [`Error::DuplicateName`] when that name is taken (the registered cache is kept).
    pub fn register(&self, cache: Arc<dyn Cache>) -> Result<()> {
        let mut caches = self.caches.write().unwrap_or_else(PoisonError::into_inner);
        let name = cache.name().to_owned();
        if caches.contains_key(&name) {
            return Err(Error::DuplicateName { name });
        }
        caches.insert(name, cache);
        Ok(())
    }

    /// The cache called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Cache>> {
        self.caches
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.caches
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// Unregisters and closes the cache called `name`; returns whether it was registered.
    ///
    /// # Errors
    /// The cache's `close` error (it is unregistered either way).
    pub async fn remove(&self, name: &str) -> Result<bool> {
        let removed = self
            .caches
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        match removed {
            Some(cache) => cache.close().await.map(|()| true),
            None => Ok(false),
        }
    }

    /// Unregisters and closes every cache, trying all of them even when some fail.
    ///
    /// # Errors
    /// [`Error::CloseAll`] listing every cache that failed to close.
    pub async fn close_all(&self) -> Result<()> {
        let caches =
            std::mem::take(&mut *self.caches.write().unwrap_or_else(PoisonError::into_inner));
        let mut failures = Vec::new();
        for (name, cache) in caches {
            if let Err(e) = cache.close().await {
                failures.push((name, e));
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(Error::CloseAll { failures })
        }
    }
}

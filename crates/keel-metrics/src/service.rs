//! The namespaced registry.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::registry::{Metric, Registry};

use crate::{Error, Result};

/// Marks a metric name owned by a collector registered with
/// [`MetricsService::get_or_register_collector`].
struct Reserved;

/// The `Content-Type` of [`MetricsService::render`]'s output (OpenMetrics 1.0 text).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type RenderHook = Box<dyn Fn() -> bool + Send + Sync>;

struct Inner {
    namespace: String,
    registry: Mutex<Registry>,
    /// Families by name, so asking twice returns the registered one instead of a duplicate.
    families: Mutex<HashMap<String, Box<dyn Any + Send + Sync>>>,
    hooks: Mutex<Vec<RenderHook>>,
    /// Handles of collector-backed family sets, by component key.
    components: Mutex<HashMap<String, Box<dyn Any + Send + Sync>>>,
}

/// A Prometheus registry with a namespace; cheap to clone (all clones share one registry).
///
/// Every metric name is prefixed with `<namespace>_`. Registering a family twice under the same
/// name returns the first one (never a panic, never a duplicate series in the output).
#[derive(Clone)]
pub struct MetricsService {
    inner: Arc<Inner>,
}

impl fmt::Debug for MetricsService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsService")
            .field("namespace", &self.inner.namespace)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data half-updated in a way that
    // matters (maps and a registry we only append to), so poisoning is ignored.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl MetricsService {
    /// A service whose metric names all start with `<namespace>_`.
    ///
    /// # Errors
    /// [`Error::InvalidNamespace`] when `namespace` is not `[a-zA-Z_][a-zA-Z0-9_]*`.
    pub fn new(namespace: impl Into<String>) -> Result<Self> {
        let namespace = namespace.into();
        if !valid_name(&namespace) {
            return Err(Error::InvalidNamespace { namespace });
        }
        Ok(Self::with_valid_namespace(namespace))
    }

    fn with_valid_namespace(namespace: String) -> Self {
        Self {
            inner: Arc::new(Inner {
                registry: Mutex::new(Registry::with_prefix(namespace.clone())),
                namespace,
                families: Mutex::default(),
                hooks: Mutex::default(),
                components: Mutex::default(),
            }),
        }
    }

    /// The process-wide service with namespace `keel`, used when a component is built without
    /// an explicit registry.
    pub fn global() -> &'static MetricsService {
        static GLOBAL: OnceLock<MetricsService> = OnceLock::new();
        GLOBAL.get_or_init(|| Self::with_valid_namespace("keel".into()))
    }

    /// The namespace given to [`MetricsService::new`].
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// Returns the metric registered under `name`, registering `make()` first if there is none.
    ///
    /// `name` is without the namespace (and, for counters, without `_total`, which the encoder
    /// appends).
    ///
    /// # Errors
    /// [`Error::InvalidName`] for a bad name, [`Error::TypeMismatch`] when `name` is taken by a
    /// metric of another Rust type.
    pub fn get_or_register<M>(&self, name: &str, help: &str, make: impl FnOnce() -> M) -> Result<M>
    where
        M: Metric + Clone,
    {
        if !valid_name(name) {
            return Err(Error::InvalidName { name: name.into() });
        }
        let mut families = lock(&self.inner.families);
        if let Some(existing) = families.get(name) {
            return existing
                .downcast_ref::<M>()
                .cloned()
                .ok_or_else(|| Error::TypeMismatch { name: name.into() });
        }
        let metric = make();
        lock(&self.inner.registry).register(name, help, metric.clone());
        families.insert(name.to_owned(), Box::new(metric.clone()));
        Ok(metric)
    }

    /// Returns the handle of the family set registered under `key`, registering it first if
    /// there is none: `make` returns the handle and the [`Collector`] that encodes the families
    /// at render time, and `names` (without namespace) are reserved for it, so
    /// [`get_or_register`](Self::get_or_register) cannot add a clashing family later.
    ///
    /// This is how a component keeps its hot-path cells in its own layout (keel-cache's cache
    /// families are one such set) while the registry stays generic.
    ///
    /// # Errors
    /// [`Error::InvalidName`] for a bad name; [`Error::TypeMismatch`] when one of `names` is
    /// already taken, or `key` holds a handle of another Rust type. Nothing is registered then.
    pub fn get_or_register_collector<T>(
        &self,
        key: &str,
        names: &[&str],
        make: impl FnOnce() -> (T, Box<dyn Collector>),
    ) -> Result<T>
    where
        T: Clone + Send + Sync + 'static,
    {
        let mut components = lock(&self.inner.components);
        if let Some(existing) = components.get(key) {
            return existing
                .downcast_ref::<T>()
                .cloned()
                .ok_or_else(|| Error::TypeMismatch { name: key.into() });
        }
        let mut families = lock(&self.inner.families);
        if let Some(bad) = names.iter().find(|n| !valid_name(n)) {
            return Err(Error::InvalidName {
                name: (*bad).into(),
            });
        }
        if let Some(taken) = names.iter().find(|n| families.contains_key(**n)) {
            return Err(Error::TypeMismatch {
                name: (*taken).into(),
            });
        }
        let (handle, collector) = make();
        for name in names {
            families.insert((*name).to_owned(), Box::new(Reserved));
        }
        lock(&self.inner.registry).register_collector(collector);
        components.insert(key.to_owned(), Box::new(handle.clone()));
        Ok(handle)
    }

    /// Adds a hook that runs before every [`render`](Self::render), e.g. to refresh a gauge
    /// that is cheaper to compute on scrape than to maintain. The hook returns `false` once its
    /// owner is gone; it is then dropped.
    pub fn on_render(&self, hook: impl Fn() -> bool + Send + Sync + 'static) {
        lock(&self.inner.hooks).push(Box::new(hook));
    }

    /// The whole registry in the OpenMetrics text format (ends with `# EOF`).
    pub fn render(&self) -> String {
        lock(&self.inner.hooks).retain(|hook| hook());
        let mut out = String::with_capacity(4096);
        let registry = lock(&self.inner.registry);
        // Writing into a String cannot fail; the encoder only propagates fmt::Error from the
        // writer.
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::gauge::Gauge;

    #[test]
    fn namespace_is_validated() {
        assert!(MetricsService::new("lab").is_ok());
        assert!(matches!(
            MetricsService::new("1lab"),
            Err(Error::InvalidNamespace { .. })
        ));
        assert!(MetricsService::new("").is_err());
        assert!(MetricsService::new("a-b").is_err());
    }

    #[test]
    fn registering_twice_returns_the_same_metric() {
        let m = MetricsService::new("lab").unwrap();
        let a: Counter = m.get_or_register("jobs", "Jobs", Counter::default).unwrap();
        let b: Counter = m.get_or_register("jobs", "Jobs", Counter::default).unwrap();
        a.inc();
        assert_eq!(b.get(), 1);
        let text = m.render();
        assert_eq!(text.matches("# TYPE lab_jobs counter").count(), 1, "{text}");
        assert!(text.contains("lab_jobs_total 1"));
        assert!(text.ends_with("# EOF\n"));
        let wrong: Result<Gauge> = m.get_or_register("jobs", "Jobs", Gauge::default);
        assert!(matches!(wrong, Err(Error::TypeMismatch { .. })));
        assert!(matches!(
            m.get_or_register("bad name", "x", Counter::<u64>::default),
            Err(Error::InvalidName { .. })
        ));
    }

    /// A collector's names are reserved, its handle is shared, and a clash registers nothing.
    #[test]
    fn collector_names_are_reserved() {
        #[derive(Debug)]
        struct Fixed;
        impl Collector for Fixed {
            fn encode(
                &self,
                mut encoder: prometheus_client::encoding::DescriptorEncoder,
            ) -> std::fmt::Result {
                let mut family = encoder.encode_descriptor(
                    "fixed",
                    "A constant",
                    None,
                    prometheus_client::metrics::MetricType::Gauge,
                )?;
                let no_labels: [(&str, &str); 0] = [];
                family.encode_family(&no_labels)?.encode_gauge(&7i64)
            }
        }
        let m = MetricsService::new("lab").unwrap();
        let make = || (Arc::new(1u8), Box::new(Fixed) as Box<dyn Collector>);
        let a = m
            .get_or_register_collector("part", &["fixed"], make)
            .unwrap();
        let b = m
            .get_or_register_collector("part", &["fixed"], make)
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let clash: Result<Counter> = m.get_or_register("fixed", "x", Counter::default);
        assert!(matches!(clash, Err(Error::TypeMismatch { .. })));
        let taken = m.get_or_register_collector("other", &["fixed"], make);
        assert!(matches!(taken, Err(Error::TypeMismatch { .. })));
        let wrong_type = m.get_or_register_collector("part", &["fixed"], || {
            (1u32, Box::new(Fixed) as Box<dyn Collector>)
        });
        assert!(matches!(wrong_type, Err(Error::TypeMismatch { .. })));
        let text = m.render();
        assert_eq!(text.matches("# TYPE lab_fixed gauge").count(), 1, "{text}");
        assert!(text.contains("lab_fixed{} 7"), "{text}");
    }

    #[test]
    fn hooks_run_on_render_until_they_say_stop() {
        let m = MetricsService::new("lab").unwrap();
        let g: Gauge = m.get_or_register("items", "Items", Gauge::default).unwrap();
        let weak = Arc::downgrade(&Arc::new(()));
        let g2 = g.clone();
        m.on_render(move || {
            g2.set(42);
            true
        });
        m.on_render(move || weak.upgrade().is_some());
        assert!(m.render().contains("lab_items 42"));
        assert_eq!(lock(&m.inner.hooks).len(), 1);
    }
}

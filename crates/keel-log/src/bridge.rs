//! Bridges from the `log` and `tracing` ecosystems (features `log` and `tracing`).

#[cfg(feature = "log")]
pub use self::log_bridge::LogBridge;
#[cfg(feature = "tracing")]
pub use self::tracing_bridge::KeelLayer;

#[cfg(feature = "log")]
mod log_bridge {
    use crate::logger::Logger;
    use crate::record::{Level, field};

    /// A `log::Log` that routes records to Keel loggers by target: the route with the longest
    /// matching prefix of the record's target wins (`"smtp"` matches `smtp::queue`), else the
    /// fallback logger. The target is kept as a `target` field. Whether a record is written
    /// is decided by the receiving logger's [`Filter`](crate::Filter) for the record's
    /// target (`smtp::session=debug`), before the message is formatted.
    #[derive(Debug, Clone)]
    pub struct LogBridge {
        routes: Vec<(String, Logger)>,
        fallback: Logger,
    }

    impl LogBridge {
        /// A bridge sending everything without a route to `fallback`.
        pub fn new(fallback: Logger) -> Self {
            Self {
                routes: Vec::new(),
                fallback,
            }
        }

        /// Sends targets starting with `prefix` (at a `::` boundary or exactly) to `logger`.
        #[must_use]
        pub fn route(mut self, prefix: impl Into<String>, logger: Logger) -> Self {
            self.routes.push((prefix.into(), logger));
            self
        }

        fn logger_for(&self, target: &str) -> &Logger {
            self.routes
                .iter()
                .filter(|(p, _)| {
                    target == p
                        || target
                            .strip_prefix(p.as_str())
                            .is_some_and(|rest| rest.starts_with("::"))
                })
                .max_by_key(|(p, _)| p.len())
                .map_or(&self.fallback, |(_, l)| l)
        }

        /// Installs the bridge as the global `log` logger, passing every level through (each
        /// Keel logger applies its own).
        ///
        /// # Errors
        /// `log::SetLoggerError` when a logger is already installed.
        pub fn install(self) -> Result<(), log::SetLoggerError> {
            log::set_boxed_logger(Box::new(self))?;
            log::set_max_level(log::LevelFilter::Trace);
            Ok(())
        }
    }

    fn level(l: log::Level) -> Level {
        match l {
            log::Level::Error => Level::Error,
            log::Level::Warn => Level::Warn,
            log::Level::Info => Level::Info,
            log::Level::Debug | log::Level::Trace => Level::Debug,
        }
    }

    impl log::Log for LogBridge {
        fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
            self.logger_for(metadata.target())
                .enabled_for(metadata.target(), level(metadata.level()))
        }

        fn log(&self, record: &log::Record<'_>) {
            let logger = self.logger_for(record.target());
            let lvl = level(record.level());
            // Checked before the message is formatted.
            if !logger.enabled_for(record.target(), lvl) {
                return;
            }
            logger.log_target(
                record.target(),
                lvl,
                record.args().to_string(),
                &[field("target", record.target().to_owned())],
            );
        }

        fn flush(&self) {
            let _ = self.fallback.flush(std::time::Duration::from_secs(5));
            for (_, l) in &self.routes {
                let _ = l.flush(std::time::Duration::from_secs(5));
            }
        }
    }
}

#[cfg(feature = "tracing")]
mod tracing_bridge {
    use tracing::field::{Field as TracingField, Visit};
    use tracing::span::{Attributes, Id, Record as SpanRecord};
    use tracing::{Event, Subscriber};
    use tracing_subscriber::layer::Context;
    use tracing_subscriber::registry::LookupSpan;

    use crate::logger::Logger;
    use crate::record::{Field, Level, Value, field};

    /// A `tracing_subscriber::Layer` that writes every event to a Keel logger: the event's
    /// `message` becomes the record's message, its other fields and the fields of every
    /// enclosing span (outermost first) become record fields, and the target is a `target`
    /// field. TRACE maps to Debug. Whether an event is written is decided by the logger's
    /// [`Filter`](crate::Filter) for the event's target (`keel_cache=debug`), before its
    /// fields are collected.
    #[derive(Debug, Clone)]
    pub struct KeelLayer {
        logger: Logger,
    }

    impl KeelLayer {
        /// A layer writing to `logger`.
        pub fn new(logger: Logger) -> Self {
            Self { logger }
        }
    }

    #[derive(Default)]
    struct Collect {
        message: Option<String>,
        fields: Vec<Field>,
    }

    impl Visit for Collect {
        fn record_debug(&mut self, f: &TracingField, value: &dyn std::fmt::Debug) {
            let text = format!("{value:?}");
            if f.name() == "message" {
                self.message = Some(text);
            } else {
                self.fields.push(field(f.name(), text));
            }
        }

        fn record_str(&mut self, f: &TracingField, value: &str) {
            if f.name() == "message" {
                self.message = Some(value.to_owned());
            } else {
                self.fields.push(field(f.name(), value.to_owned()));
            }
        }

        fn record_i64(&mut self, f: &TracingField, value: i64) {
            self.fields.push(field(f.name(), value));
        }

        fn record_u64(&mut self, f: &TracingField, value: u64) {
            self.fields.push(field(f.name(), value));
        }

        fn record_f64(&mut self, f: &TracingField, value: f64) {
            self.fields.push(field(f.name(), value));
        }

        fn record_bool(&mut self, f: &TracingField, value: bool) {
            self.fields.push(field(f.name(), value));
        }

        fn record_error(&mut self, f: &TracingField, value: &(dyn std::error::Error + 'static)) {
            self.fields.push(Field {
                key: f.name().into(),
                value: Value::error(value),
            });
        }
    }

    /// Span fields stored in the span's extensions.
    struct SpanFields(Vec<Field>);

    fn level(l: &tracing::Level) -> Level {
        match *l {
            tracing::Level::ERROR => Level::Error,
            tracing::Level::WARN => Level::Warn,
            tracing::Level::INFO => Level::Info,
            _ => Level::Debug,
        }
    }

    impl<S> tracing_subscriber::Layer<S> for KeelLayer
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
            let mut c = Collect::default();
            attrs.record(&mut c);
            if let Some(span) = ctx.span(id) {
                span.extensions_mut().insert(SpanFields(c.fields));
            }
        }

        fn on_record(&self, id: &Id, values: &SpanRecord<'_>, ctx: Context<'_, S>) {
            let mut c = Collect::default();
            values.record(&mut c);
            if let Some(span) = ctx.span(id) {
                let mut ext = span.extensions_mut();
                match ext.get_mut::<SpanFields>() {
                    Some(fields) => fields.0.extend(c.fields),
                    None => ext.insert(SpanFields(c.fields)),
                }
            }
        }

        fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
            let lvl = level(event.metadata().level());
            let target = event.metadata().target();
            if !self.logger.enabled_for(target, lvl) {
                return;
            }
            let mut fields = Vec::new();
            if let Some(scope) = ctx.event_scope(event) {
                for span in scope.from_root() {
                    if let Some(f) = span.extensions().get::<SpanFields>() {
                        fields.extend(f.0.iter().cloned());
                    }
                }
            }
            let mut c = Collect::default();
            event.record(&mut c);
            fields.extend(c.fields);
            fields.push(field("target", target.to_owned()));
            self.logger
                .log_target(target, lvl, c.message.unwrap_or_default(), &fields);
        }
    }
}

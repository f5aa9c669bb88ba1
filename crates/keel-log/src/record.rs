//! Levels, fields and records.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

/// Severity, ordered `Debug < Info < Warn < Error < Fatal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Diagnostic detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that was handled.
    Warn,
    /// An operation failed.
    Error,
    /// The process cannot go on (loggers flush every sink, then exit).
    Fatal,
}

impl Level {
    /// `DEBUG`, `INFO`, `WARN`, `ERROR`, `FATAL`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
            Level::Fatal => "FATAL",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A level name that is not one of debug, info, warn(ing), error, fatal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown log level {0:?}; valid levels are: debug, info, warn, error, fatal")]
pub struct ParseLevelError(pub String);

impl FromStr for Level {
    type Err = ParseLevelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "debug" => Ok(Level::Debug),
            "info" => Ok(Level::Info),
            "warn" | "warning" => Ok(Level::Warn),
            "error" => Ok(Level::Error),
            "fatal" => Ok(Level::Fatal),
            _ => Err(ParseLevelError(s.to_owned())),
        }
    }
}

/// A field value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Text.
    Str(Cow<'static, str>),
    /// A signed integer.
    I64(i64),
    /// An unsigned integer.
    U64(u64),
    /// A float (non-finite values are written as strings in JSON).
    F64(f64),
    /// A boolean.
    Bool(bool),
    /// Any serde value (objects and arrays are kept nested in JSON).
    Json(serde_json::Value),
}

impl From<&'static str> for Value {
    fn from(v: &'static str) -> Self {
        Value::Str(Cow::Borrowed(v))
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Str(Cow::Owned(v))
    }
}

impl From<serde_json::Value> for Value {
    fn from(v: serde_json::Value) -> Self {
        Value::Json(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::F64(v)
    }
}

macro_rules! signed {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self {
                Value::I64(i64::from(v))
            }
        }
    )*};
}
signed!(i8, i16, i32, i64);

macro_rules! unsigned {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self {
                Value::U64(u64::from(v))
            }
        }
    )*};
}
unsigned!(u8, u16, u32, u64);

impl From<usize> for Value {
    fn from(v: usize) -> Self {
        Value::U64(u64::try_from(v).unwrap_or(u64::MAX))
    }
}

impl Value {
    /// An error as its message (with its sources, `: `-joined).
    pub fn error(e: &(dyn std::error::Error + 'static)) -> Self {
        let mut text = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        Value::Str(Cow::Owned(text))
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => f.write_str(s),
            Value::I64(v) => write!(f, "{v}"),
            Value::U64(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::Json(v) => write!(f, "{v}"),
        }
    }
}

/// A key and a value.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// The key.
    pub key: Cow<'static, str>,
    /// The value.
    pub value: Value,
}

/// A field: `field("user_id", 123)`, `field("path", path.display().to_string())`.
pub fn field(key: impl Into<Cow<'static, str>>, value: impl Into<Value>) -> Field {
    Field {
        key: key.into(),
        value: value.into(),
    }
}

/// A record's own fields: inline up to four (no allocation for the usual call).
pub type Fields = smallvec::SmallVec<[Field; 4]>;

/// One log event.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// When it happened.
    pub time: SystemTime,
    /// Severity.
    pub level: Level,
    /// The logger's name.
    pub logger: Cow<'static, str>,
    /// The message (a literal is not copied).
    pub message: Cow<'static, str>,
    /// Fields bound by `with_fields`, shared with the logger (not copied per record); `None`
    /// when the logger has none (no allocation, no shared count to touch).
    pub bound: Option<std::sync::Arc<[Field]>>,
    /// The call's own fields (up to four are stored inline, without an allocation).
    pub fields: Fields,
}

impl Record {
    /// A record stamped now, without fields.
    pub fn new(
        level: Level,
        logger: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            time: SystemTime::now(),
            level,
            logger: logger.into(),
            message: message.into(),
            bound: None,
            fields: Fields::new(),
        }
    }

    /// Every field: the bound ones first, then the call's own.
    pub fn all_fields(&self) -> impl Iterator<Item = &Field> {
        self.bound.iter().flat_map(|b| b.iter()).chain(&self.fields)
    }

    /// Adds fields.
    #[must_use]
    pub fn with(mut self, fields: Vec<Field>) -> Self {
        self.fields.extend(fields);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_order_and_print() {
        assert_eq!("WARNING".parse::<Level>().unwrap(), Level::Warn);
        assert_eq!(" info ".parse::<Level>().unwrap(), Level::Info);
        assert!(Level::Debug < Level::Info && Level::Error < Level::Fatal);
        let err = "verbose".parse::<Level>().unwrap_err();
        assert!(err.to_string().contains("valid levels are"));
        assert_eq!(Level::Fatal.to_string(), "FATAL");
    }

    #[test]
    fn errors_become_their_message_chain() {
        let io = std::io::Error::other("disk full");
        let v = Value::error(&io);
        assert_eq!(v.to_string(), "disk full");
        assert_eq!(field("n", 3u8).value, Value::U64(3));
        assert_eq!(field("n", -3).value, Value::I64(-3));
    }
}

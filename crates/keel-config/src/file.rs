//! Reading a config file: the format by extension, parse errors without credentials.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::Error;

/// A config file syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// TOML (`.toml`).
    Toml,
    /// YAML (`.yaml`, `.yml`).
    Yaml,
    /// JSON (`.json`).
    Json,
}

impl Format {
    /// The format a path's extension names: `.toml`, `.yaml`/`.yml`, `.json`.
    ///
    /// # Errors
    /// [`Error::UnknownExtension`] for any other extension, or none.
    pub fn from_path(path: &Path) -> Result<Self, Error> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => Ok(Self::Toml),
            Some("yaml" | "yml") => Ok(Self::Yaml),
            Some("json") => Ok(Self::Json),
            _ => Err(Error::UnknownExtension {
                path: path.display().to_string(),
            }),
        }
    }

    /// `toml`, `yaml` or `json`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Toml => "toml",
            Self::Yaml => "yaml",
            Self::Json => "json",
        }
    }
}

/// Parses `text` in `format` into a config.
///
/// # Errors
/// [`Error::Parse`], whose message names the position where the parser gives one and has
/// every URL's credentials masked ([`redact_urls`]). TOML's own message would quote the
/// offending source line, which may hold a password: only its message and position are used.
pub fn from_str<T: DeserializeOwned>(format: Format, text: &str) -> Result<T, Error> {
    let message = match format {
        Format::Toml => match toml::from_str(text) {
            Ok(v) => return Ok(v),
            Err(e) => {
                let e: toml::de::Error = e;
                let at = e.span().map(|span| {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    format!(" at line {line}, column {column}")
                });
                format!("{}{}", e.message(), at.unwrap_or_default())
            }
        },
        Format::Yaml => match serde_norway::from_str(text) {
            Ok(v) => return Ok(v),
            Err(e) => e.to_string(),
        },
        Format::Json => match serde_json::from_str(text) {
            Ok(v) => return Ok(v),
            Err(e) => e.to_string(),
        },
    };
    Err(Error::Parse {
        format: format.name(),
        message: redact_urls(&message),
    })
}

/// Reads a config file, choosing the format by its extension ([`Format::from_path`]).
///
/// # Errors
/// [`Error::File`] when it cannot be read, [`Error::UnknownExtension`], [`Error::Parse`].
pub fn from_path<T: DeserializeOwned>(path: impl AsRef<Path>) -> Result<T, Error> {
    let path = path.as_ref();
    let format = Format::from_path(path)?;
    let text = std::fs::read_to_string(path).map_err(|source| Error::File {
        path: path.display().to_string(),
        source,
    })?;
    from_str(format, &text)
}

/// `text` with the user-info part of every URL or address in it replaced by `***`:
/// `scheme://user:pass@host` becomes `scheme://***@host`, and a Cluster or Sentinel address
/// written without a scheme (`user:pass@host:port`) becomes `***@host:port`. For Debug output
/// and error messages. Words are split at whitespace and quotes; in each, the user-info is
/// what comes before the last `@` of the authority (after `://` if any, up to the first `/`).
/// Any other word with an `@` (an e-mail address) is redacted too: better too much than a
/// password.
pub fn redact_urls(text: &str) -> String {
    let boundary = |c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if boundary(c) {
            out.push(c);
            rest = &rest[c.len_utf8()..];
            continue;
        }
        let end = rest.find(boundary).unwrap_or(rest.len());
        let (word, tail) = rest.split_at(end);
        let start = word.find("://").map_or(0, |i| i + 3);
        let authority = word[start..].find('/').map_or(word.len(), |i| start + i);
        match word[start..authority].rfind('@') {
            Some(at) => {
                out.push_str(&word[..start]);
                out.push_str("***");
                out.push_str(&word[start + at..]);
            }
            None => out.push_str(word),
        }
        rest = tail;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct C {
        #[allow(dead_code)]
        url: String,
    }

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            redact_urls("redis://u:hunter2@h:1/0 and rediss://:pw@x:2"),
            "redis://***@h:1/0 and rediss://***@x:2"
        );
        assert_eq!(redact_urls("redis://h:1"), "redis://h:1");
        assert_eq!(redact_urls("no url"), "no url");
        // Cluster and Sentinel addresses may be written without a scheme.
        assert_eq!(
            redact_urls("seed u:hunter2@h:1 and \":pw@x:2\", plain h:3"),
            "seed ***@h:1 and \"***@x:2\", plain h:3"
        );
    }

    #[test]
    fn files_by_extension_and_errors_without_secrets() {
        let dir = std::env::temp_dir().join(format!("keel-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in [
            ("a.toml", "url = \"redis://h\"\n"),
            ("a.yaml", "url: redis://h\n"),
            ("a.yml", "url: redis://h\n"),
            ("a.json", "{\"url\": \"redis://h\"}"),
        ] {
            std::fs::write(dir.join(name), text).unwrap();
            let c: C = from_path(dir.join(name)).unwrap();
            assert_eq!(c.url, "redis://h");
        }
        std::fs::write(dir.join("a.ini"), "url = x").unwrap();
        assert!(matches!(
            from_path::<C>(dir.join("a.ini")),
            Err(Error::UnknownExtension { .. })
        ));
        assert!(matches!(
            from_path::<C>(dir.join("missing.toml")),
            Err(Error::File { .. })
        ));
        for (format, text) in [
            (Format::Toml, "url = \"redis://u:hunter2@h\"\nextra = 1\n"),
            (Format::Yaml, "url: redis://u:hunter2@h\nextra: 1\n"),
            (
                Format::Json,
                "{\"url\": \"redis://u:hunter2@h\", \"extra\": 1}",
            ),
            (Format::Toml, "url = redis://u:hunter2@h\n"),
        ] {
            let e = from_str::<C>(format, text).unwrap_err().to_string();
            assert!(!e.contains("hunter2"), "{e}");
            assert!(
                e.starts_with(&format!("invalid {} config", format.name())),
                "{e}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

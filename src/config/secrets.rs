//! Secrets kept out of the TOML file: systemd credentials (`LoadCredential=` puts each in
//! a file under `$CREDENTIALS_DIRECTORY`, readable only by the service) and one
//! environment variable per librdkafka property (`INGESTD_KAFKA_SASL_PASSWORD`).

use std::path::{Path, PathBuf};

/// Keys a credential sets to its own path: files ingestd reads itself, so the key (TLS
/// key, token list) never needs copying out of systemd's credential store.
pub const PATH_KEYS: &[&str] = &["tls_cert", "tls_key", "tls_client_ca", "auth_token_file"];

/// The librdkafka property an `INGESTD_KAFKA_<NAME>` variable sets (`key` is the part
/// after `INGESTD_`, lowercased): `_` stands for `.`, since a variable name cannot hold a
/// dot and no librdkafka property name holds an underscore. `INGESTD_KAFKA` itself (an
/// inline table) is not one.
pub fn kafka_env_property(key: &str) -> Option<String> {
    key.strip_prefix("kafka_")
        .filter(|p| !p.is_empty())
        .map(|p| p.replace('_', "."))
}

/// A setting a credential makes.
#[derive(Debug, PartialEq)]
pub enum Credential {
    /// `tls_key` and the like: the key is set to the credential file's path.
    Path(&'static str, PathBuf),
    /// `kafka.sasl.password` and the like: the librdkafka property is set to the file's
    /// contents, without a final line break (an `echo`-written file has one).
    Kafka(String, String, PathBuf),
}

/// Every credential in `dir`, in name order. A name that is neither a path key nor
/// `kafka.<property>` is an error rather than ignored: a typo there would otherwise leave
/// a secret unset without a word.
pub fn credentials(dir: &Path) -> Result<Vec<Credential>, String> {
    let what = |e: std::io::Error| format!("CREDENTIALS_DIRECTORY {}: {e}", dir.display());
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(what)? {
        let entry = entry.map_err(what)?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let path = dir.join(&name);
        if let Some(key) = PATH_KEYS.iter().find(|k| **k == name) {
            out.push(Credential::Path(key, path));
        } else if let Some(prop) = name.strip_prefix("kafka.").filter(|p| !p.is_empty()) {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("credential {}: {e}", path.display()))?;
            let value = text.strip_suffix('\n').unwrap_or(&text);
            let value = value.strip_suffix('\r').unwrap_or(value);
            out.push(Credential::Kafka(prop.to_string(), value.to_string(), path));
        } else {
            return Err(format!(
                "credential {}: not a credential ingestd reads; the names are {} (set to the credential's path) and kafka.<librdkafka property> (set to its contents)",
                path.display(),
                PATH_KEYS.join(", ")
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_map_to_properties() {
        assert_eq!(
            kafka_env_property("kafka_sasl_password").as_deref(),
            Some("sasl.password")
        );
        assert_eq!(kafka_env_property("kafka"), None);
        assert_eq!(kafka_env_property("kafka_"), None);
        assert_eq!(kafka_env_property("tls_key"), None);
    }

    #[test]
    fn credentials_are_paths_or_kafka_values_and_unknown_names_fail() {
        let dir = std::env::temp_dir().join(format!("ingestd-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tls_key"), "-----BEGIN PRIVATE KEY-----\n").unwrap();
        std::fs::write(dir.join("kafka.sasl.password"), "s3cret\n").unwrap();
        let got = credentials(&dir).unwrap();
        assert_eq!(
            got,
            vec![
                Credential::Kafka(
                    "sasl.password".into(),
                    "s3cret".into(),
                    dir.join("kafka.sasl.password")
                ),
                Credential::Path("tls_key", dir.join("tls_key")),
            ]
        );
        std::fs::write(dir.join("tls.key"), "x").unwrap();
        let err = credentials(&dir).unwrap_err();
        assert!(err.contains("tls.key") && err.contains("tls_key"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

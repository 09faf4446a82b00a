//! Profiles: named sets of connection settings in one TOML file, one of them current. Flags and
//! environment variables override the profile's values (`Settings::resolve`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{CliError, Result};

/// What fjordctl connects with when nothing is configured: a broker from the README's first
/// command (`fjord` on 127.0.0.1:9092, its admin API on 127.0.0.1:9644).
pub const DEFAULT_BROKERS: &str = "127.0.0.1:9092";
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:9644";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Kafka bootstrap addresses, comma-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brokers: Option<String>,
    /// The admin HTTP API's base URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_url: Option<String>,
    /// TLS: a CA bundle to trust, and a client certificate and key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<String>,
    /// SASL: the mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512), user and password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_mechanism: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_password: Option<String>,
}

impl Profile {
    /// Whether the profile asks for TLS or SASL, which this fjordctl cannot speak yet.
    pub fn secured(&self) -> bool {
        self.tls_ca_file.is_some()
            || self.tls_cert_file.is_some()
            || self.tls_key_file.is_some()
            || self.sasl_mechanism.is_some()
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

/// The config file: `--config`, else `FJORDCTL_CONFIG`, else `$XDG_CONFIG_HOME/fjordctl/config.toml`
/// (`~/.config/fjordctl/config.toml`).
pub fn config_path(flag: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("FJORDCTL_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|p| !p.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => match std::env::var_os("HOME").filter(|p| !p.is_empty()) {
            Some(h) => PathBuf::from(h).join(".config"),
            None => return Err(CliError::usage("no config file: set --config, FJORDCTL_CONFIG or HOME")),
        },
    };
    Ok(base.join("fjordctl").join("config.toml"))
}

impl ConfigFile {
    /// The error for a profile name the file does not have, listing those it has.
    pub fn unknown(&self, name: &str) -> CliError {
        let known: Vec<&str> = self.profiles.keys().map(String::as_str).collect();
        CliError::usage(format!("no profile named {name:?} (profiles: {})", list_or_none(&known)))
    }

    /// The file at `path`; an absent file is an empty config.
    pub fn load(path: &Path) -> Result<ConfigFile> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text)
                .map_err(|e| CliError::usage(format!("{}: {}", path.display(), e.message().trim()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
            Err(e) => Err(CliError::usage(format!("{}: {e}", path.display()))),
        }
    }

    /// Writes the file whole (a temporary file renamed over it), readable by its owner only: a
    /// profile may hold a SASL password.
    pub fn save(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| CliError::failed(format!("{}: {e}", dir.display())))?;
        }
        let text = toml::to_string(self).map_err(|e| CliError::failed(e.to_string()))?;
        let tmp = path.with_extension("toml.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| CliError::failed(format!("{}: {e}", tmp.display())))?;
        f.write_all(text.as_bytes()).and_then(|_| f.sync_all())?;
        std::fs::rename(&tmp, path).map_err(|e| CliError::failed(format!("{}: {e}", path.display())))?;
        Ok(())
    }
}

/// What a command connects with, after flags, environment and profile.
#[derive(Debug, Clone)]
pub struct Settings {
    pub brokers: Vec<String>,
    pub admin_url: String,
}

impl Settings {
    /// Flags (and their environment variables, which clap has already read) win over the
    /// profile, the profile over the defaults. The profile is `--profile` (`FJORD_PROFILE`),
    /// else the file's current one.
    pub fn resolve(
        file: &ConfigFile,
        profile_flag: Option<&str>,
        brokers: Option<&str>,
        admin_url: Option<&str>,
    ) -> Result<Settings> {
        let name = profile_flag.map(str::to_string).or_else(|| file.current.clone());
        let profile = match &name {
            Some(n) => Some(file.profiles.get(n).ok_or_else(|| file.unknown(n))?),
            None => None,
        };
        if profile.is_some_and(Profile::secured) {
            return Err(CliError::usage(format!(
                "profile {:?} sets TLS or SASL, which Fjord does not serve yet; remove those settings",
                name.unwrap_or_default()
            )));
        }
        let brokers = brokers
            .map(str::to_string)
            .or_else(|| profile.and_then(|p| p.brokers.clone()))
            .unwrap_or_else(|| DEFAULT_BROKERS.to_string());
        let brokers: Vec<String> =
            brokers.split(',').map(str::trim).filter(|b| !b.is_empty()).map(String::from).collect();
        if brokers.is_empty() {
            return Err(CliError::usage("no broker address given (--brokers host:port,...)"));
        }
        for b in &brokers {
            check_host_port(b)?;
        }
        let admin_url = admin_url
            .map(str::to_string)
            .or_else(|| profile.and_then(|p| p.admin_url.clone()))
            .unwrap_or_else(|| DEFAULT_ADMIN_URL.to_string());
        Ok(Settings { brokers, admin_url })
    }
}

pub fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// A broker address must be host:port with a port number.
pub fn check_host_port(addr: &str) -> Result<()> {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => Ok(()),
        _ => Err(CliError::usage(format!("broker address {addr:?} is not host:port"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> ConfigFile {
        let mut f = ConfigFile { current: Some("prod".into()), ..Default::default() };
        f.profiles.insert(
            "prod".into(),
            Profile { brokers: Some("a:1,b:2".into()), admin_url: Some("http://a:9644".into()), ..Default::default() },
        );
        f.profiles.insert("dev".into(), Profile { brokers: Some("d:9".into()), ..Default::default() });
        f
    }

    #[test]
    fn flags_win_over_the_profile_and_the_profile_over_defaults() {
        let s = Settings::resolve(&file(), None, None, None).unwrap();
        assert_eq!(s.brokers, vec!["a:1", "b:2"]);
        assert_eq!(s.admin_url, "http://a:9644");
        let s = Settings::resolve(&file(), Some("dev"), None, None).unwrap();
        assert_eq!((s.brokers, s.admin_url.as_str()), (vec!["d:9".to_string()], DEFAULT_ADMIN_URL));
        let s = Settings::resolve(&file(), None, Some("x:3"), Some("http://x")).unwrap();
        assert_eq!((s.brokers, s.admin_url.as_str()), (vec!["x:3".to_string()], "http://x"));
        let s = Settings::resolve(&ConfigFile::default(), None, None, None).unwrap();
        assert_eq!(s.brokers, vec![DEFAULT_BROKERS]);
    }

    #[test]
    fn unknown_profiles_and_bad_addresses_are_usage_errors() {
        let e = Settings::resolve(&file(), Some("qa"), None, None).unwrap_err();
        assert_eq!(e.kind, crate::error::Kind::Usage);
        assert!(e.message.contains("dev, prod"), "{e}");
        let e = Settings::resolve(&file(), None, Some("nohost"), None).unwrap_err();
        assert!(e.message.contains("not host:port"), "{e}");
    }

    #[test]
    fn a_saved_file_reads_back_and_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("config.toml");
        file().save(&path).unwrap();
        let back = ConfigFile::load(&path).unwrap();
        assert_eq!(back.profiles, file().profiles);
        assert_eq!(back.current.as_deref(), Some("prod"));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::write(&path, "currnt = 1").unwrap();
        let e = ConfigFile::load(&path).unwrap_err();
        assert!(e.message.contains("currnt"), "{e}");
    }
}

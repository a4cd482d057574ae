//! Where the broker and Redis are and how to reach them: the connection flags `qsched`
//! and `qagent` share, in one place.
//!
//! A URL comes from its flag or environment variable, or from a file
//! (`--amqp-file`/`--redis-file`) so that a password never shows in `ps`; an encrypted
//! URL (`amqps://`, `rediss://`) may name a private CA (`--amqp-ca-file`/`--redis-ca-file`).

use std::path::PathBuf;

use clap::Args;

use crate::amqp::AmqpConfig;
use crate::error::Result;
use crate::redis_store::RedisConfig;
use crate::secrets::read_url_file;
use crate::tls::CaBundle;

/// The default broker: the local RabbitMQ with its default account.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The default store: the local Redis.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Connection flags of every command that talks to the fleet.
#[derive(Args, Debug, Clone)]
pub struct Endpoints {
    /// RabbitMQ URL (`amqp://` or `amqps://`).
    #[arg(long, global = true, env = "QSCHED_AMQP_URL", default_value = DEFAULT_AMQP_URL, hide_env_values = true)]
    pub amqp: String,
    /// Redis URL (`redis://` or `rediss://`).
    #[arg(long, global = true, env = "QSCHED_REDIS_URL", default_value = DEFAULT_REDIS_URL, hide_env_values = true)]
    pub redis: String,
    /// Read the RabbitMQ URL from this file (first line) instead of --amqp / QSCHED_AMQP_URL:
    /// keeps the password out of `ps`.
    #[arg(long, global = true, value_name = "FILE")]
    pub amqp_file: Option<PathBuf>,
    /// Read the Redis URL from this file (first line) instead of --redis / QSCHED_REDIS_URL:
    /// keeps the password out of `ps`.
    #[arg(long, global = true, value_name = "FILE")]
    pub redis_file: Option<PathBuf>,
    /// PEM file of the CA that signed the broker's certificate (`amqps://` only); without
    /// it the host's certificate store is used.
    #[arg(long, global = true, env = "QSCHED_AMQP_CA_FILE", value_name = "FILE")]
    pub amqp_ca_file: Option<PathBuf>,
    /// PEM file of the CA that signed Redis's certificate (`rediss://` only); without it
    /// the host's certificate store is used.
    #[arg(long, global = true, env = "QSCHED_REDIS_CA_FILE", value_name = "FILE")]
    pub redis_ca_file: Option<PathBuf>,
}

impl Endpoints {
    /// The broker URL, from the file when one is named.
    pub fn amqp_url(&self) -> Result<String> {
        match &self.amqp_file {
            Some(path) => read_url_file(path),
            None => Ok(self.amqp.clone()),
        }
    }

    /// The Redis URL, from the file when one is named.
    pub fn redis_url(&self) -> Result<String> {
        match &self.redis_file {
            Some(path) => read_url_file(path),
            None => Ok(self.redis.clone()),
        }
    }

    /// Broker settings for `prefix` (defaults for everything the flags do not set).
    pub fn amqp_config(&self, prefix: &str) -> Result<AmqpConfig> {
        let mut config = AmqpConfig::new(self.amqp_url()?).with_prefix(prefix);
        config.ca = self.amqp_ca_file.as_deref().map(CaBundle::read).transpose()?;
        Ok(config)
    }

    /// Store settings for `prefix` (defaults for everything the flags do not set).
    pub fn redis_config(&self, prefix: &str) -> Result<RedisConfig> {
        let mut config = RedisConfig::new(self.redis_url()?).with_prefix(prefix);
        config.ca = self.redis_ca_file.as_deref().map(CaBundle::read).transpose()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        endpoints: Endpoints,
    }

    #[test]
    fn a_url_file_and_a_ca_file_reach_the_configs() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("redis.url");
        std::fs::write(&url, "rediss://:pw@127.0.0.1:6380\n").unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n").unwrap();
        let cli =
            Cli::try_parse_from(["t", "--redis-file", url.to_str().unwrap(), "--redis-ca-file", ca.to_str().unwrap()])
                .unwrap();
        let redis = cli.endpoints.redis_config("p").unwrap();
        assert_eq!(redis.url, "rediss://:pw@127.0.0.1:6380");
        assert_eq!(redis.ca.map(|c| c.certificates()), Some(1));
        let amqp = cli.endpoints.amqp_config("p").unwrap();
        assert!(amqp.ca.is_none());
    }

    #[test]
    fn a_missing_ca_file_is_an_error_naming_it() {
        let cli = Cli::try_parse_from(["t", "--amqp-ca-file", "/nonexistent/ca.pem"]).unwrap();
        let err = cli.endpoints.amqp_config("p").unwrap_err().to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }
}

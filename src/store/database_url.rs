//! `--database-url` / `AGENTD_DATABASE_URL`: which PostgreSQL database holds
//! the store. Parsed once at start, so a malformed URL stops agentd with a
//! message before anything listens; printed only without its password.

use std::{fmt, str::FromStr};

use anyhow::Context as _;
use sqlx::postgres::PgConnectOptions;

#[derive(Clone)]
pub struct DatabaseUrl {
    options: PgConnectOptions,
}

impl DatabaseUrl {
    /// A `postgres://` (or `postgresql://`) URL in libpq's form. Errors never
    /// repeat the URL: it may hold a password.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        anyhow::ensure!(
            matches!(scheme.as_deref(), Some("postgres" | "postgresql")),
            "--database-url / AGENTD_DATABASE_URL must be a postgres:// URL \
             (leave it unset for SQLite in the data directory)"
        );
        let options = PgConnectOptions::from_str(url)
            .context("--database-url / AGENTD_DATABASE_URL is not a valid PostgreSQL URL")?;
        Ok(Self { options })
    }

    pub fn connect_options(&self) -> &PgConnectOptions {
        &self.options
    }
}

/// `postgres://user@host:port/database`: where, never the password.
impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        let host = match o.get_socket() {
            Some(dir) => dir.display().to_string(),
            None => o.get_host().to_string(),
        };
        write!(f, "postgres://{}@{host}:{}", o.get_username(), o.get_port())?;
        if let Some(db) = o.get_database() {
            write!(f, "/{db}")?;
        }
        Ok(())
    }
}

/// As Display: `PgConnectOptions`' own Debug would print the password.
impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_never_printed() {
        let url = DatabaseUrl::parse("postgres://agentd:s3cr3t-pw@db.internal:6543/tasks").unwrap();
        assert_eq!(url.to_string(), "postgres://agentd@db.internal:6543/tasks");
        assert!(!format!("{url:?}").contains("s3cr3t"));
        assert_eq!(url.connect_options().get_port(), 6543);
    }

    #[test]
    fn other_schemes_and_malformed_urls_are_refused_without_echo() {
        for bad in [
            "mysql://root:s3cr3t@localhost/x",
            "sqlite://data/agentd.db",
            "db.internal:5432",
            "postgres://u:s3cr3t@host:notaport/x",
            "postgres://u:s3cr3t@host/x?sslmode=sometimes",
        ] {
            let e = format!("{:#}", DatabaseUrl::parse(bad).unwrap_err());
            assert!(e.contains("AGENTD_DATABASE_URL"), "{bad}: {e}");
            assert!(!e.contains("s3cr3t"), "{bad}: {e}");
        }
        assert!(DatabaseUrl::parse("postgresql://localhost/agentd").is_ok());
    }
}

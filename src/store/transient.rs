//! Which store failures are worth retrying: the database was unreachable or
//! restarting (a shared PostgreSQL restarted, a connection reset), not a
//! refused write. Callers that retry must make the retry idempotent.

use crate::error::Error;

/// Whether `e` is the database being away rather than the write being wrong.
pub fn is_transient(e: &Error) -> bool {
    let Error::Internal(inner) = e else {
        return false;
    };
    inner.chain().any(|cause| {
        let Some(e) = cause.downcast_ref::<sqlx::Error>() else {
            return false;
        };
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_) => true,
            // Connection exceptions (08…), shutting down (57P01-57P03).
            sqlx::Error::Database(db) => db
                .code()
                .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unreachable_database_is_transient() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(is_transient(&Error::from(io)));
        assert!(is_transient(&Error::from(sqlx::Error::PoolTimedOut)));
        assert!(!is_transient(&Error::from(sqlx::Error::RowNotFound)));
        assert!(!is_transient(&Error::invalid("bad input")));
        assert!(!is_transient(&Error::Internal(anyhow::anyhow!("a bug"))));
    }
}

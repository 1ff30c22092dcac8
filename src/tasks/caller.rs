//! Who is asking, and which tasks they may see: with API keys on, a task
//! belongs to the key that created it. Another key's task is answered as if
//! it did not exist (404, never 403: its existence is not revealed).

/// The identity the API layer found on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No API keys are configured: one implicit tenant, every task.
    Anyone,
    /// An admin key (by name): every task.
    Admin(String),
    /// A key (by name) that sees only the tasks it created.
    User(String),
}

impl Caller {
    /// The key's name, for the audit log (None without keys).
    pub fn name(&self) -> Option<&str> {
        match self {
            Caller::Anyone => None,
            Caller::Admin(n) | Caller::User(n) => Some(n),
        }
    }

    /// The owner recorded on a task this caller creates.
    pub(super) fn new_owner(&self) -> Option<String> {
        self.name().map(str::to_string)
    }

    /// Lists and counts are narrowed to this owner (None: every task).
    pub(super) fn owner_filter(&self) -> Option<String> {
        match self {
            Caller::User(n) => Some(n.clone()),
            _ => None,
        }
    }

    /// Whether a task with this owner is visible to the caller.
    pub fn may_see(&self, owner: Option<&str>) -> bool {
        match self {
            Caller::User(n) => owner == Some(n.as_str()),
            Caller::Anyone | Caller::Admin(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_see_their_own_tasks_admins_and_anyone_all() {
        let alice = Caller::User("alice".into());
        assert!(alice.may_see(Some("alice")));
        assert!(!alice.may_see(Some("bob")));
        assert!(!alice.may_see(None), "tasks made before keys were on");
        assert!(Caller::Admin("root".into()).may_see(Some("bob")));
        assert!(Caller::Anyone.may_see(None));
        assert_eq!(alice.owner_filter().as_deref(), Some("alice"));
        assert_eq!(Caller::Admin("root".into()).owner_filter(), None);
        assert_eq!(
            Caller::Admin("root".into()).new_owner().as_deref(),
            Some("root")
        );
        assert_eq!(Caller::Anyone.new_owner(), None);
    }
}

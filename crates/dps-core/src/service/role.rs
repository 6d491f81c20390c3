//! The role of the database this node writes to, as the composition root last saw it (a shared
//! store is polled; an embedded one is always primary). A node serves devices only while its
//! database is primary: on a standby, or with the database unreachable, every device request
//! gets 503 with `Retry-After`, so devices retry, and nothing is written.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use super::Services;
use crate::error::{Error, Result};

/// What the node's database is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Writable: serve.
    Primary,
    /// A hot standby (read-only): serve no device; service-API reads still work.
    Standby,
    /// Not answering.
    Unreachable,
    /// Writable, but the peer region's database is primary on a higher timeline: this one is
    /// an old primary restarted after a failover (split brain). Serve nothing.
    Fenced,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
            Role::Unreachable => "unreachable",
            Role::Fenced => "fenced",
        }
    }
}

/// How long a device refused for the role should wait before retrying.
pub const ROLE_RETRY_AFTER: Duration = Duration::from_secs(2);

/// The shared cell (every clone of [`Services`] sees one role).
#[derive(Debug, Default)]
pub(crate) struct RoleCell(AtomicU8);

impl RoleCell {
    fn get(&self) -> Role {
        decode(self.0.load(Ordering::Acquire))
    }
    fn set(&self, r: Role) -> Role {
        let v = match r {
            Role::Primary => 0,
            Role::Standby => 1,
            Role::Unreachable => 2,
            Role::Fenced => 3,
        };
        decode(self.0.swap(v, Ordering::AcqRel))
    }
}

fn decode(v: u8) -> Role {
    match v {
        0 => Role::Primary,
        1 => Role::Standby,
        2 => Role::Unreachable,
        _ => Role::Fenced,
    }
}

impl Services {
    /// The role of this node's database, as last set.
    pub fn role(&self) -> Role {
        self.role.get()
    }

    /// Records the database's role; returns the previous one.
    pub fn set_role(&self, role: Role) -> Role {
        self.role.set(role)
    }

    /// `Ok` while device traffic and writes may be served (the database is primary); else
    /// `Error::NotServing` (503 with Retry-After).
    pub fn serving(&self) -> Result<()> {
        match self.role() {
            Role::Primary => Ok(()),
            role => Err(Error::NotServing { role: role.as_str(), retry_after: ROLE_RETRY_AFTER }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_role_is_shared_and_swapped() {
        let c = RoleCell::default();
        assert_eq!(c.get(), Role::Primary);
        assert_eq!(c.set(Role::Standby), Role::Primary);
        assert_eq!(c.set(Role::Unreachable), Role::Standby);
        assert_eq!(c.get(), Role::Unreachable);
        assert_eq!(c.set(Role::Fenced), Role::Unreachable);
        assert_eq!(c.get(), Role::Fenced);
    }
}

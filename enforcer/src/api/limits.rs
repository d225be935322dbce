//! What one client can cost the daemon: how many connections it may hold,
//! how long a connection may sit idle or take to send a request or read an
//! answer, and how large a request may be. See `docs/daemon.md` ("Limits").

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::access::Role;
use crate::policy::files::MAX_SET_BYTES;

/// The API's limits (settings `max_connections`, `max_connections_per_user`,
/// `idle_timeout`, `request_timeout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once, everyone together.
    pub max_connections: usize,
    /// Connections open at once per uid other than root and the daemon's
    /// own. The last `max_connections_per_user` slots are kept for root and
    /// the daemon's user, the `max_connections_per_user` before them for
    /// the admin group too.
    pub max_connections_per_user: usize,
    /// A connection with no request begun for this long is closed.
    pub idle_timeout: Duration,
    /// A request line must be complete this long after its first byte, and
    /// each answer line must be taken by the client within it.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 256,
            max_connections_per_user: 16,
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
        }
    }
}

impl Limits {
    /// Checks that the caps leave room for every class of client.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_connections_per_user == 0 {
            return Err("max_connections_per_user must be at least 1".into());
        }
        if self.max_connections <= 2 * self.max_connections_per_user {
            return Err(format!(
                "max_connections ({}) must be more than twice max_connections_per_user ({}): \
                 that many slots are kept for root and the admin group",
                self.max_connections, self.max_connections_per_user
            ));
        }
        if self.idle_timeout.is_zero() || self.request_timeout.is_zero() {
            return Err("idle_timeout and request_timeout must be more than 0".into());
        }
        Ok(())
    }
}

/// The longest request line a role may send, newline included. A reader
/// only ever sends a few hundred bytes; an admin's `apply` carries a policy
/// set of up to [`MAX_SET_BYTES`], which JSON escaping of valid TOML text at
/// most doubles, plus names and framing.
pub const fn max_request_bytes(role: Role) -> usize {
    match role {
        Role::Read => 16 * 1024,
        Role::Admin => 2 * MAX_SET_BYTES as usize + (1 << 20),
    }
}

/// Who is asking for a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claimant {
    /// Root or the daemon's own user.
    Privileged,
    /// Another uid, with its role.
    User { uid: u32, role: Role },
}

/// Why a connection got no slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    /// Every slot this class of client may use is taken.
    Total { max: usize },
    /// This uid holds its share.
    User { uid: u32, max: usize },
}

impl fmt::Display for Full {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Full::Total { max } => write!(
                f,
                "too many connections: the daemon serves at most {max} clients of this kind at once; try again later"
            ),
            Full::User { uid, max } => write!(
                f,
                "too many connections: uid {uid} already holds {max}, the most one user may hold"
            ),
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_uid: HashMap<u32, usize>,
}

/// The connection slots: taken when a connection is admitted, given back
/// when its [`Slot`] drops.
#[derive(Debug)]
pub struct Slots {
    limits: Limits,
    counts: Mutex<Counts>,
}

/// One admitted connection's slot.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    uid: Option<u32>,
}

impl Slots {
    pub fn new(limits: Limits) -> Arc<Slots> {
        Arc::new(Slots {
            limits,
            counts: Mutex::new(Counts::default()),
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // The counts stay consistent whatever panicked while holding them.
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.counts().total
    }

    /// A slot for `claimant`, or why there is none.
    pub fn take(self: &Arc<Self>, claimant: Claimant) -> Result<Slot, Full> {
        let Limits {
            max_connections: max,
            max_connections_per_user: per_user,
            ..
        } = self.limits;
        let mut counts = self.counts();
        let (ceiling, uid) = match claimant {
            Claimant::Privileged => (max, None),
            Claimant::User {
                uid,
                role: Role::Admin,
            } => (max - per_user, Some(uid)),
            Claimant::User {
                uid,
                role: Role::Read,
            } => (max - 2 * per_user, Some(uid)),
        };
        if counts.total >= ceiling {
            return Err(Full::Total { max: ceiling });
        }
        if let Some(uid) = uid {
            let held = counts.per_uid.entry(uid).or_default();
            if *held >= per_user {
                return Err(Full::User { uid, max: per_user });
            }
            *held += 1;
        }
        counts.total += 1;
        Ok(Slot {
            slots: Arc::clone(self),
            uid,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.slots.counts();
        counts.total = counts.total.saturating_sub(1);
        if let Some(uid) = self.uid
            && let Some(held) = counts.per_uid.get_mut(&uid)
        {
            *held -= 1;
            if *held == 0 {
                counts.per_uid.remove(&uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, per_user: usize) -> Limits {
        Limits {
            max_connections: max,
            max_connections_per_user: per_user,
            ..Limits::default()
        }
    }

    fn reader(uid: u32) -> Claimant {
        Claimant::User {
            uid,
            role: Role::Read,
        }
    }

    #[test]
    fn one_user_cannot_take_every_slot() {
        let slots = Slots::new(limits(10, 2));
        let held: Vec<Slot> = (0..2).map(|_| slots.take(reader(7)).unwrap()).collect();
        assert_eq!(
            slots.take(reader(7)).unwrap_err(),
            Full::User { uid: 7, max: 2 }
        );
        assert!(slots.take(reader(8)).is_ok());
        drop(held);
        assert_eq!(slots.open(), 0, "slots are given back on drop");
        assert!(slots.take(reader(7)).is_ok());
    }

    #[test]
    fn the_last_slots_are_kept_for_admins_and_root() {
        let slots = Slots::new(limits(10, 2));
        // Readers of many uids fill what they may: 10 - 2 * 2.
        let readers: Vec<Slot> = (0..6)
            .map(|i| slots.take(reader(100 + i)).unwrap())
            .collect();
        assert_eq!(slots.take(reader(200)).unwrap_err(), Full::Total { max: 6 });
        let admin = Claimant::User {
            uid: 300,
            role: Role::Admin,
        };
        let admins: Vec<Slot> = (0..2).map(|_| slots.take(admin).unwrap()).collect();
        assert!(matches!(
            slots.take(Claimant::User {
                uid: 301,
                role: Role::Admin
            }),
            Err(Full::Total { max: 8 })
        ));
        // Root gets the rest, and no more.
        let root: Vec<Slot> = (0..2)
            .map(|_| slots.take(Claimant::Privileged).unwrap())
            .collect();
        assert_eq!(
            slots.take(Claimant::Privileged).unwrap_err(),
            Full::Total { max: 10 }
        );
        assert_eq!(slots.open(), 10);
        drop((readers, admins, root));
        assert_eq!(slots.open(), 0);
    }

    #[test]
    fn limits_must_leave_room() {
        assert!(Limits::default().validate().is_ok());
        assert!(limits(32, 16).validate().is_err());
        assert!(limits(33, 16).validate().is_ok());
        assert!(limits(10, 0).validate().is_err());
        assert!(max_request_bytes(Role::Read) < 64 * 1024);
        assert!(max_request_bytes(Role::Admin) > 2 * MAX_SET_BYTES as usize);
    }
}

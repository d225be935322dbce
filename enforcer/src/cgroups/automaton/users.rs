//! The users that `user = ...` selectors name, as this host knows them.

use crate::policy::UnitUser;

/// A user's uid on this host, from the password database. A user the
/// database does not have, or cannot be asked about, is no user here.
pub fn uid_of_user(user: &UnitUser) -> Option<u32> {
    match user {
        UnitUser::Uid(uid) => Some(*uid),
        UnitUser::Name(name) => nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .map(|user| user.uid.as_raw()),
    }
}

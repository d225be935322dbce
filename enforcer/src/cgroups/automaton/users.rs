//! The users that `user = ...` selectors name, as this host knows them.

use crate::compile::compiled::UnitUser;

impl std::fmt::Display for UnitUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnitUser::Name(name) => write!(f, "{name}"),
            UnitUser::Uid(uid) => write!(f, "{uid}"),
        }
    }
}

/// A user's uid on this host, from the password database.
pub fn uid_of_user(user: &UnitUser) -> Option<u32> {
    match user {
        UnitUser::Uid(uid) => Some(*uid),
        UnitUser::Name(name) => {
            let c_name = std::ffi::CString::new(name.as_str()).ok()?;
            let mut buffer = vec![0 as libc::c_char; 16 * 1024];
            // SAFETY: all-zero is a valid `struct passwd` (integers and
            // null pointers).
            let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
            let mut result: *mut libc::passwd = std::ptr::null_mut();
            // SAFETY: every pointer is valid for the call, and the length
            // passed is the buffer's.
            let rc = unsafe {
                libc::getpwnam_r(
                    c_name.as_ptr(),
                    &mut entry,
                    buffer.as_mut_ptr(),
                    buffer.len(),
                    &mut result,
                )
            };
            (rc == 0 && !result.is_null()).then_some(entry.pw_uid)
        }
    }
}

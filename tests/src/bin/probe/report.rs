//! The one-line JSON result every probe client prints, and its exit code.

use std::{
    fmt::Write as _,
    io,
    time::{Duration, Instant},
};

/// What happened, as the tests classify it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The exchange worked.
    Ok,
    /// A local hook refused the operation (EPERM or EACCES).
    Eperm,
    /// Nothing came back in time.
    Timeout,
    /// The peer refused (TCP RST, ICMP port unreachable).
    Refused,
    /// Anything else.
    Error,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Eperm => "eperm",
            Self::Timeout => "timeout",
            Self::Refused => "refused",
            Self::Error => "error",
        }
    }

    /// The process exit code for this verdict.
    pub(crate) fn exit_code(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::Error => 1,
            Self::Eperm => 2,
            Self::Timeout => 3,
            Self::Refused => 4,
        }
    }
}

/// One outcome: verdict, errno (0 when none), details.
#[derive(Clone, Debug)]
pub(crate) struct Outcome {
    pub verdict: Verdict,
    pub errno: i32,
    pub detail: String,
}

impl Outcome {
    pub(crate) fn ok() -> Self {
        Self {
            verdict: Verdict::Ok,
            errno: 0,
            detail: String::new(),
        }
    }

    pub(crate) fn timeout(what: &str) -> Self {
        Self {
            verdict: Verdict::Timeout,
            errno: libc::ETIMEDOUT,
            detail: format!("no answer to {what} in time"),
        }
    }

    pub(crate) fn error(detail: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Error,
            errno: 0,
            detail: detail.into(),
        }
    }

    /// Classifies a failed system call.
    pub(crate) fn from_io(call: &str, err: &io::Error) -> Self {
        let errno = err.raw_os_error().unwrap_or(0);
        let verdict = match errno {
            libc::EPERM | libc::EACCES => Verdict::Eperm,
            libc::ECONNREFUSED => Verdict::Refused,
            libc::ETIMEDOUT => Verdict::Timeout,
            _ => Verdict::Error,
        };
        Self {
            verdict,
            errno,
            detail: format!("{call}: {err}"),
        }
    }
}

/// Extra `"key":value` members of a report line.
#[derive(Default)]
pub(crate) struct Fields(String);

impl Fields {
    pub(crate) fn str(mut self, key: &str, value: &str) -> Self {
        let _ = write!(self.0, ",\"{key}\":\"{}\"", escape(value));
        self
    }

    pub(crate) fn num(mut self, key: &str, value: u64) -> Self {
        let _ = write!(self.0, ",\"{key}\":{value}");
        self
    }
}

/// Prints one report line and returns the verdict.
pub(crate) fn print(outcome: &Outcome, started: Instant, fields: Fields) -> Verdict {
    let elapsed = Instant::now().saturating_duration_since(started);
    println!("{}", line(outcome, elapsed, &fields));
    outcome.verdict
}

fn line(outcome: &Outcome, elapsed: Duration, fields: &Fields) -> String {
    let mut out = format!(
        "{{\"result\":\"{}\",\"errno\":{},\"elapsed_ms\":{}",
        outcome.verdict.as_str(),
        outcome.errno,
        elapsed.as_millis()
    );
    out.push_str(&fields.0);
    if !outcome.detail.is_empty() {
        let _ = write!(out, ",\"detail\":\"{}\"", escape(&outcome.detail));
    }
    out.push('}');
    out
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_the_agreed_shape() {
        let o = Outcome::from_io("connect", &io::Error::from_raw_os_error(libc::EPERM));
        let l = line(
            &o,
            Duration::from_millis(7),
            &Fields::default().str("local", "[::1]:5"),
        );
        assert!(l.starts_with(r#"{"result":"eperm","errno":1,"elapsed_ms":7,"local":"[::1]:5","detail":"connect: "#), "{l}");
        assert!(l.ends_with('}'));
        assert_eq!(escape("a\"b\\c\n\u{1}"), r#"a\"b\\c\n\u0001"#);
    }
}

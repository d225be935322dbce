//! The engine's parts that run without a data plane: candidates, errors
//! as the operator reads them, the retry schedule and what `status` and
//! `STATUS=` say.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use enforcer_common::config::SlotPolicy;

use super::lifecycle::empty_policy_refusal;
use super::probation::{ROLLBACK_RETRY_MAX, rollback_retry_after};
use super::report::{
    adopted_kernel_policy_problem, describe_kernel_policy, discovery_report, rejection_suffix,
};
use super::*;
use crate::api::proto::Rejection;
use crate::cgroups::{DiscoveryStatus, SkipReason};
use crate::daemon::state::StateError;
use crate::dataplane::DataplaneError;
use crate::policy::fixtures::WEB_TO_HOST;

fn files(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(name, text)| (name.to_string(), text.to_string()))
        .collect()
}

fn rejection(errors: &[&str]) -> Rejection {
    Rejection {
        time: "2026-12-08T00:00:00.000Z".into(),
        trigger: Trigger::FileChange.as_str().into(),
        source: "/etc/enforcer/policies".into(),
        errors: errors.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn a_failing_rollback_is_retried_sooner_first_then_every_half_minute() {
    let waits: Vec<u64> = (1..=8)
        .map(|attempts| rollback_retry_after(attempts).as_secs())
        .collect();
    assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
    assert_eq!(rollback_retry_after(u32::MAX), ROLLBACK_RETRY_MAX);
}

/// The reasons discovery counts and the keys `status --json` and the
/// metrics show are the same names.
#[test]
fn every_skip_reason_reaches_status_under_its_own_name() {
    for (i, reason) in SkipReason::ALL.into_iter().enumerate() {
        let count = 10 + i as u64;
        let report = discovery_report(DiscoveryStatus {
            skipped: vec![(reason, count)],
            ..DiscoveryStatus::default()
        });
        let shown: Vec<_> = report
            .skipped
            .by_reason()
            .into_iter()
            .filter(|&(_, n)| n > 0)
            .collect();
        assert_eq!(shown, [(reason.as_str(), count)]);
    }
}

#[test]
fn received_files_compile_in_name_order_whatever_order_they_came_in() {
    let now = SystemTime::now();
    let received = files(&[("b.toml", "# second\n"), ("a.toml", WEB_TO_HOST)]);
    let candidate = Candidate::from_files(Path::new("/srv/p"), received, now).unwrap();
    let names: Vec<&Path> = candidate.sources.iter().map(|(p, _)| p.as_path()).collect();
    assert_eq!(
        names,
        [Path::new("/srv/p/a.toml"), Path::new("/srv/p/b.toml")]
    );
    assert_eq!(candidate.compiled.workloads.len(), 1);
    assert_eq!(candidate.compiled.workloads[0].name, "web");
}

#[test]
fn received_file_names_are_refused_one_message_each() {
    let received = files(&[("../x.toml", WEB_TO_HOST), ("a.toml", ""), ("a.toml", "")]);
    let Err(error) = Candidate::from_files(Path::new("/srv/p"), received, SystemTime::now()) else {
        panic!("refused names were accepted");
    };
    assert!(
        matches!(error, EngineError::ReceivedFilesRefused { .. }),
        "{error:?}"
    );
    let messages = error.messages();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(
        messages[0].starts_with("policy file name \"../x.toml\": "),
        "{messages:?}"
    );
    assert_eq!(messages[1], "policy file \"a.toml\" was sent twice");
}

#[test]
fn an_invalid_policy_gives_each_error_with_its_file_line_and_column() {
    let text = "[workload.web]\ncgroup = \"web*\"\nlabels = { app = \"web\" }\nbogus = 1\n";
    let received = files(&[("a.toml", text)]);
    let Err(error) = Candidate::from_files(Path::new("/srv/p"), received, SystemTime::now()) else {
        panic!("an invalid policy compiled");
    };
    assert!(matches!(error, EngineError::InvalidPolicy(_)), "{error:?}");
    let messages = error.messages();
    assert!(!messages.is_empty());
    for m in &messages {
        assert!(m.starts_with("/srv/p/a.toml:"), "{m}");
    }
    assert!(
        messages.iter().any(|m| m.starts_with("/srv/p/a.toml:4:")),
        "{messages:?}"
    );
    assert_eq!(error.joined(), messages.join("; "));
}

#[test]
fn a_directory_is_read_and_compiled_and_a_missing_one_named() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("a.toml"), WEB_TO_HOST).unwrap();
    let candidate = Candidate::from_dir(tmp.path(), SystemTime::now()).unwrap();
    assert_eq!(candidate.sources.len(), 1);
    assert_eq!(candidate.compiled.workloads.len(), 1);

    let missing = tmp.path().join("missing");
    let Err(error) = Candidate::from_dir(&missing, SystemTime::now()) else {
        panic!("a missing directory was read");
    };
    let messages = error.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert!(
        messages[0].starts_with(&format!("cannot read {}", missing.display())),
        "{messages:?}"
    );
}

#[test]
fn the_empty_policy_set_has_no_workload() {
    let empty = Candidate::empty(SystemTime::now()).unwrap();
    assert!(empty.compiled.workloads.is_empty());
    assert!(empty.sources.is_empty());
}

#[test]
fn an_empty_policy_set_is_refused_with_the_way_out() {
    let dir = Path::new("/etc/enforcer/policies");
    let enforced = "the policy in force (generation 3) enforces 2 workload(s)";
    let by_apply = empty_policy_refusal(Trigger::Apply, dir, enforced.into());
    assert_eq!(
        by_apply.messages(),
        [format!(
            "/etc/enforcer/policies: the policy set has no workload, while {enforced}: putting it \
             in force would stop enforcing all of them; run `enforcer apply --allow-empty` to do that"
        )]
    );
    let by_reload = empty_policy_refusal(Trigger::Sighup, dir, enforced.into());
    assert!(
        by_reload.to_string().ends_with(
            "; to enforce nothing, run `enforcer apply --allow-empty /etc/enforcer/policies`"
        ),
        "{by_reload}"
    );
}

#[test]
fn data_plane_failures_are_shown_with_their_cause() {
    let refused = EngineError::UnableToWritePolicy(DataplaneError::InvalidSetting("x".into()));
    assert_eq!(
        refused.messages(),
        ["the data plane refused the policy: invalid setting: x"]
    );
    let cause = std::io::Error::from_raw_os_error(libc::EMFILE);
    let no_addrs = EngineError::UnableToListHostAddrs(DataplaneError::UnableToListAddresses(cause));
    assert_eq!(
        no_addrs.joined(),
        format!(
            "cannot list the host's addresses: {}",
            std::io::Error::from_raw_os_error(libc::EMFILE)
        )
    );
    // The typed cause stays reachable for callers that look.
    let source = std::error::Error::source(&refused).expect("a source");
    assert_eq!(source.to_string(), "invalid setting: x");
}

#[test]
fn refusing_to_start_says_why_no_last_good_policy_helps() {
    let policies = PathBuf::from("/etc/enforcer/policies");
    let refusal = |why| EngineError::NothingToEnforce {
        policies: policies.clone(),
        first_error: "a.toml:1:1: bad".into(),
        why,
    };
    let shown = refusal(LastGoodUnavailable::NotSaved(
        "/var/lib/enforcer/last-good.json".into(),
    ))
    .to_string();
    assert!(
        shown.starts_with(
            "the policy in /etc/enforcer/policies is invalid (a.toml:1:1: bad) and no last good \
             policy can be put in force instead (/var/lib/enforcer/last-good.json does not exist)"
        ),
        "{shown}"
    );
    assert!(shown.ends_with("(`enforcer check /etc/enforcer/policies`) and start again"));
    let garbled = StateError::Garbled {
        path: "/var/lib/enforcer/last-good.json".into(),
        reason: "EOF".into(),
    };
    let shown = refusal(LastGoodUnavailable::Refused(garbled)).to_string();
    assert!(shown.contains("truncated or damaged; ignored)"), "{shown}");
    assert_eq!(
        LastGoodUnavailable::StateDirUnusable(None).to_string(),
        "the state directory cannot be used: unknown error"
    );
    let not_put =
        LastGoodUnavailable::NotPutInForce(Box::new(EngineError::NothingInForce)).to_string();
    assert_eq!(not_put, "no policy in force");
}

#[test]
fn a_kernel_policy_is_described_by_generation_hash_and_time() {
    let stamp = SlotPolicy {
        content_hash: 0xba28_5995_1006_2884,
        applied_unix_ms: 1_000,
    };
    assert_eq!(
        describe_kernel_policy(Some(7), Some(stamp)),
        "generation 7, content hash ba28599510062884, applied at 1970-01-01T00:00:01.000Z"
    );
    assert_eq!(describe_kernel_policy(Some(7), None), "generation 7");
    assert_eq!(describe_kernel_policy(None, None), "generation unknown");
}

#[test]
fn an_adopted_kernel_policy_is_not_enforced_as_written() {
    let plain = adopted_kernel_policy_problem("generation 7", None);
    assert!(
        plain
            .starts_with("no policy loaded: the policy pinned by an earlier daemon (generation 7)")
    );
    let rejected = adopted_kernel_policy_problem("generation 7", Some(&rejection(&["e"])));
    assert!(
        rejected.starts_with(
            "the policy from /etc/enforcer/policies was rejected (file change); the policy pinned"
        ),
        "{rejected}"
    );
}

#[test]
fn the_status_line_shows_the_first_rejection_error_and_how_many_more() {
    assert_eq!(
        rejection_suffix(&rejection(&["a.toml:1:1: x"])),
        "; REJECTED (file change): a.toml:1:1: x"
    );
    assert_eq!(
        rejection_suffix(&rejection(&["one", "two", "three"])),
        "; REJECTED (file change): one (+2 more)"
    );
    assert_eq!(
        rejection_suffix(&rejection(&[])),
        "; REJECTED (file change): "
    );
}

#[test]
fn a_wall_clock_deadline_becomes_an_instant() {
    let before = Instant::now();
    assert!(instant_of(UNIX_EPOCH) >= before);
    assert!(instant_of(UNIX_EPOCH) <= Instant::now());
    let ahead = instant_of(SystemTime::now() + Duration::from_secs(60));
    assert!(ahead >= before + Duration::from_secs(59), "{ahead:?}");
    assert!(ahead <= Instant::now() + Duration::from_secs(60));
}

#[test]
fn triggers_and_origins_have_the_names_status_shows() {
    let triggers = [
        Trigger::Startup,
        Trigger::Sighup,
        Trigger::FileChange,
        Trigger::Apply,
        Trigger::Expiry,
        Trigger::Rollback,
    ]
    .map(Trigger::as_str);
    assert_eq!(
        triggers,
        [
            "startup",
            "sighup",
            "file change",
            "apply",
            "expiry",
            "rollback"
        ]
    );
    assert_eq!(
        [Origin::Adopted, Origin::Restored].map(Origin::as_str),
        ["adopted", "restored"]
    );
}

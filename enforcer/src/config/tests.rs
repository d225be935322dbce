//! The file format, the merge with the command line, and the values' text.

use std::path::Path;

use super::*;
use crate::dataplane::UnmanagedMode;

#[test]
fn an_empty_file_gives_the_contract_defaults() {
    let s =
        Settings::resolve(FileConfig::default(), FileConfig::default(), Path::new("/")).unwrap();
    assert_eq!(s.policies, Path::new(DEFAULT_DIR));
    assert_eq!(s.socket, Path::new(DEFAULT_SOCKET));
    assert_eq!(s.bpffs, Path::new(DEFAULT_BPFFS));
    assert_eq!(s.unmanaged, UnmanagedMode::Allow);
    assert_eq!(s.failsafe.to_string(), "22/tcp");
    assert_eq!(s.metrics, None);
    assert_eq!(s.cgroup_root, None);
    assert_eq!(s.state_dir, Path::new(DEFAULT_STATE_DIR));
}

#[test]
fn every_key_parses_and_the_command_line_wins() {
    let text = r#"
policies = "/srv/policies"
cgroup_root = "system.slice"
bpffs = "/sys/fs/bpf/other"
socket = "/run/other.sock"
read_group = "enforcer"
admin_group = "enforcer-admin"
max_connections = 64
max_connections_per_user = 4
idle_timeout = "2m"
request_timeout = 5
unmanaged = "audit"
failsafe = ["22/tcp", "53/udp"]
metrics = "127.0.0.1:9617"
log_format = "json"
flow_history = 50
state_dir = "state"
"#;
    let file = FileConfig::parse(text, Path::new("e.toml")).unwrap();
    let cli = FileConfig {
        socket: Some("rel.sock".into()),
        unmanaged: Some(UnmanagedMode::Deny),
        ..FileConfig::default()
    };
    let s = Settings::resolve(file, cli, Path::new("/work")).unwrap();
    assert_eq!(s.policies, Path::new("/srv/policies"));
    assert_eq!(s.socket, Path::new("/work/rel.sock"));
    assert_eq!(s.unmanaged, UnmanagedMode::Deny);
    assert_eq!(s.failsafe.to_string(), "22/tcp,53/udp");
    assert_eq!(s.metrics, Some("127.0.0.1:9617".parse().unwrap()));
    assert_eq!(s.log_format, LogFormat::Json);
    assert_eq!(s.flow_history, 50);
    assert_eq!(s.state_dir, Path::new("/work/state"));
    assert_eq!(s.read_group.as_deref(), Some("enforcer"));
    assert_eq!(s.admin_group.as_deref(), Some("enforcer-admin"));
    assert_eq!(
        s.limits,
        Limits {
            max_connections: 64,
            max_connections_per_user: 4,
            idle_timeout: std::time::Duration::from_secs(120),
            request_timeout: std::time::Duration::from_secs(5),
        }
    );
}

#[test]
fn socket_group_is_the_earlier_name_of_admin_group() {
    let file = FileConfig::parse("socket_group = \"ops\"", Path::new("c")).unwrap();
    let s = Settings::resolve(file.clone(), FileConfig::default(), Path::new("/")).unwrap();
    assert_eq!(s.admin_group.as_deref(), Some("ops"));
    assert_eq!(s.read_group, None);
    // The command line wins, under either name.
    let cli = FileConfig {
        socket_group: Some("sre".into()),
        ..FileConfig::default()
    };
    let s = Settings::resolve(file, cli, Path::new("/")).unwrap();
    assert_eq!(s.admin_group.as_deref(), Some("sre"));
    // Both names in one place disagree: an error.
    let both =
        FileConfig::parse("socket_group = \"a\"\nadmin_group = \"b\"", Path::new("c")).unwrap();
    let err = Settings::resolve(both, FileConfig::default(), Path::new("/")).unwrap_err();
    assert!(err.to_string().contains("socket_group"), "{err}");
}

#[test]
fn connection_limits_are_checked() {
    let file = FileConfig::parse(
        "max_connections = 8\nmax_connections_per_user = 4",
        Path::new("c"),
    )
    .unwrap();
    assert!(Settings::resolve(file, FileConfig::default(), Path::new("/")).is_err());
    assert!(FileConfig::parse("idle_timeout = \"soon\"", Path::new("c")).is_err());
}

#[test]
fn unknown_keys_are_errors_with_file_line_col() {
    let text = "policies = \"/p\"\n  sokcet = \"/x\"\n";
    let err = FileConfig::parse(text, Path::new("/etc/enforcer/enforcer.toml")).unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.starts_with("/etc/enforcer/enforcer.toml:2:3: "),
        "{shown}"
    );
    assert!(shown.contains("sokcet"), "{shown}");
}

#[test]
fn bad_values_are_errors_with_their_position() {
    let err = FileConfig::parse("unmanaged = \"maybe\"\n", Path::new("c.toml")).unwrap_err();
    assert!(err.to_string().starts_with("c.toml:1:13: "), "{err}");
    let err = FileConfig::parse("\nfailsafe = \"22/sctp\"\n", Path::new("c.toml")).unwrap_err();
    assert!(err.to_string().starts_with("c.toml:2:"), "{err}");
    assert!(FileConfig::parse("metrics = \"nope\"", Path::new("c.toml")).is_err());
}

#[test]
fn failsafe_lists() {
    assert_eq!("none".parse::<Failsafe>().unwrap().0, []);
    assert_eq!(
        "443/tcp, 22/tcp,22/tcp"
            .parse::<Failsafe>()
            .unwrap()
            .to_string(),
        "22/tcp,443/tcp"
    );
    assert!("0/tcp".parse::<Failsafe>().is_err());
    assert!("22".parse::<Failsafe>().is_err());
    assert!("70000/udp".parse::<Failsafe>().is_err());
    let file = FileConfig::parse("failsafe = []", Path::new("c")).unwrap();
    assert_eq!(file.failsafe, Some(Failsafe(Vec::new())));
}

#[test]
fn a_missing_default_file_is_empty_but_a_named_one_is_an_error() {
    let missing = Path::new("/nonexistent/enforcer.toml");
    assert_eq!(
        FileConfig::load(missing, false).unwrap(),
        FileConfig::default()
    );
    assert!(matches!(
        FileConfig::load(missing, true),
        Err(ConfigError::Read { .. })
    ));
}

#[test]
fn unmanaged_modes_read_and_show_by_name() {
    for mode in [
        UnmanagedMode::Allow,
        UnmanagedMode::Audit,
        UnmanagedMode::Deny,
    ] {
        assert_eq!(mode.to_string().parse::<UnmanagedMode>(), Ok(mode));
        let file =
            FileConfig::parse(&format!("unmanaged = \"{mode}\""), Path::new("c.toml")).unwrap();
        assert_eq!(file.unmanaged, Some(mode));
    }
    assert_eq!(UnmanagedMode::Deny.as_str(), "deny");
    let err = "maybe".parse::<UnmanagedMode>().unwrap_err();
    assert!(err.contains("allow, audit or deny"), "{err}");
}

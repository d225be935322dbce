use std::os::unix::fs::MetadataExt as _;

use enforcer_common::protocol::Protocol;

use super::procfs::{ProcSocket, bound_ports, parse_proc_cgroup, parse_proc_net, socket_inode};
use super::*;

const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000   105        0 41234 1 0000000000000000 100 0 0 10 0
   1: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41001 1 0000000000000000 100 0 0 10 0
   2: 0100007F:0050 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 51000 1 0000000000000000 20 4 30 10 -1
   3: garbage
";

const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41002 1 0000000000000000 100 0 0 10 0
";

const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  100: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 60001 2 0000000000000000 0
  101: 0100007F:A1B2 0100007F:0035 01 00000000:00000000 00:00000000 00000000     0        0 60002 2 0000000000000000 0
";

#[test]
fn tcp_tables_give_listening_sockets_only() {
    assert_eq!(
        parse_proc_net(TCP, Protocol::Tcp as u8),
        vec![
            ProcSocket {
                port: 5432,
                inode: 41234
            },
            ProcSocket {
                port: 80,
                inode: 41001
            },
        ]
    );
    assert_eq!(
        parse_proc_net(TCP6, Protocol::Tcp as u8),
        vec![ProcSocket {
            port: 80,
            inode: 41002
        }]
    );
}

#[test]
fn udp_tables_give_unconnected_bound_sockets_only() {
    assert_eq!(
        parse_proc_net(UDP, Protocol::Udp as u8),
        vec![ProcSocket {
            port: 53,
            inode: 60001
        }]
    );
}

#[test]
fn proc_cgroup_gives_the_v2_path() {
    let hybrid = "12:net_cls,net_prio:/\n1:name=systemd:/system.slice/nginx.service\n0::/system.slice/nginx.service\n";
    assert_eq!(
        parse_proc_cgroup(hybrid),
        Some("/system.slice/nginx.service")
    );
    assert_eq!(parse_proc_cgroup("0::/\n"), Some("/"));
    assert_eq!(parse_proc_cgroup("1:cpu:/x\n"), None);
}

#[test]
fn fd_links_give_socket_inodes() {
    assert_eq!(socket_inode("socket:[41234]"), Some(41234));
    assert_eq!(socket_inode("pipe:[41234]"), None);
    assert_eq!(socket_inode("/dev/null"), None);
    assert_eq!(socket_inode("socket:[x]"), None);
}

#[test]
fn diag_messages_parse_with_their_cgroup_id() {
    // One inet_diag_msg (LISTEN, port 5432) with INET_DIAG_CGROUP_ID,
    // then NLMSG_DONE.
    let mut body = vec![0u8; 72];
    body[0] = libc::AF_INET as u8;
    body[1] = 10;
    body[4..6].copy_from_slice(&5432u16.to_be_bytes());
    body.extend_from_slice(&12u16.to_ne_bytes());
    body.extend_from_slice(&21u16.to_ne_bytes());
    body.extend_from_slice(&4242u64.to_ne_bytes());
    let mut buf = Vec::new();
    buf.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    buf.extend_from_slice(&20u16.to_ne_bytes());
    buf.extend_from_slice(&[0; 10]);
    buf.extend_from_slice(&body);
    buf.extend_from_slice(&20u32.to_ne_bytes());
    buf.extend_from_slice(&3u16.to_ne_bytes());
    buf.extend_from_slice(&[0; 14]);
    let (sockets, done) = diag::parse(&buf).unwrap();
    assert!(done);
    assert_eq!(
        sockets,
        [diag::DiagSocket {
            state: 10,
            port: 5432,
            remote_port: 0,
            cgroup_id: Some(4242)
        }]
    );
    // A truncated message is an error, not a panic.
    assert!(diag::parse(&buf[..40]).is_err());
    // A kernel error ends the dump as that error.
    let mut error = Vec::new();
    error.extend_from_slice(&36u32.to_ne_bytes());
    error.extend_from_slice(&2u16.to_ne_bytes());
    error.extend_from_slice(&[0; 10]);
    error.extend_from_slice(&(-libc::EPERM).to_ne_bytes());
    error.extend_from_slice(&[0; 16]);
    let failed = diag::parse(&error).unwrap_err();
    assert_eq!(failed.raw_os_error(), Some(libc::EPERM));
}

#[test]
fn diag_requests_are_the_kernels_layout() {
    let request = diag::request(libc::AF_INET6 as u8, 17, 1 << 7, 9);
    assert_eq!(request.len(), 72);
    assert_eq!(request[..4], 72u32.to_ne_bytes());
    // SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, the sequence number.
    assert_eq!(request[4..6], 20u16.to_ne_bytes());
    assert_eq!(request[6..8], 0x301u16.to_ne_bytes());
    assert_eq!(request[8..12], 9u32.to_ne_bytes());
    // inet_diag_req_v2: family, protocol, no extensions, the states; any
    // socket.
    assert_eq!(request[16..20], [libc::AF_INET6 as u8, 17, 0, 0]);
    assert_eq!(request[20..24], (1u32 << 7).to_ne_bytes());
    assert!(request[24..].iter().all(|&b| b == 0));
}

#[test]
fn sock_diag_finds_this_process_listening_and_udp_sockets() {
    let Ok(mount) = super::super::cgroup2_mount() else {
        return; // no cgroup v2 here: nothing to map to
    };
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = std::net::UdpSocket::bind("[::1]:0").unwrap();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let path = parse_proc_cgroup(&own).unwrap();
    let id = std::fs::metadata(mount.join(path.trim_start_matches('/')))
        .unwrap()
        .ino();
    let found = diag::bound_ports().unwrap();
    assert!(found.contains(&(Protocol::Tcp as u8, tcp.local_addr().unwrap().port(), id)));
    assert!(found.contains(&(Protocol::Udp as u8, udp.local_addr().unwrap().port(), id)));
    let scan = scan(&mount, |_, _| false);
    assert!(
        scan.bound
            .contains(&(Protocol::Tcp as u8, tcp.local_addr().unwrap().port()))
    );
}

#[test]
fn this_process_listening_socket_is_found_in_its_cgroup() {
    let Ok(mount) = super::super::cgroup2_mount() else {
        return; // no cgroup v2 here: nothing to map to
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let path = parse_proc_cgroup(&own).unwrap();
    let id = std::fs::metadata(mount.join(path.trim_start_matches('/')))
        .unwrap()
        .ino();
    assert!(
        bound_ports(&mount).contains(&(Protocol::Tcp as u8, port, id)),
        "port {port} in cgroup {id} not found"
    );
}

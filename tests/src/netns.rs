//! Test hosts: a network namespace joined to this machine by a veth pair.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use serde::Deserialize;

use crate::{
    error::{Error, Result},
    subnet::Subnet,
    util::{ip, next_serial, poll_until},
};

/// Prefix of the network namespaces this crate creates (`enft-<pid>-<n>`).
pub const NETNS_PREFIX: &str = "enft-";
/// Prefix of the veth interfaces this crate creates (`enf<pid>o<n>` in this
/// machine's namespace, `enf<pid>i<n>` inside the test host).
pub const LINK_PREFIX: &str = "enf";

/// Linux limits interface names to 15 bytes.
const IFNAMSIZ_MAX: usize = 15;

/// A simulated remote host: a network namespace `enft-<pid>-<n>` whose
/// interface `enf<pid>i<n>` is the peer of `enf<pid>o<n>` in this machine's
/// (the root) namespace, with addresses from a documentation range.
///
/// The machine's end of each subnet gets its first address (`.1`, `::1`),
/// the test host its second (`.2`, `::2`); the host's default routes point
/// back at the machine. IPv6 addresses are added with `nodad` so they are
/// usable at once. Processes run inside it through
/// [`Spawner::netns`](crate::Spawner::netns) or the probe helpers.
///
/// Dropping it deletes the veth pair (synchronously, so the range is free
/// again at once) and the namespace.
#[derive(Debug)]
pub struct TestHost {
    name: String,
    outer: String,
    inner: String,
    v4: Option<Subnet>,
    v6: Option<Subnet>,
    removed: bool,
}

/// Configures a [`TestHost`]; see [`TestHost::builder`].
#[derive(Debug, Default)]
#[must_use]
pub struct TestHostBuilder {
    v4: Option<String>,
    v6: Option<String>,
}

impl TestHostBuilder {
    /// The IPv4 subnet of the link, inside 198.51.100.0/24 or 203.0.113.0/24
    /// (e.g. `"198.51.100.0/24"` or `"203.0.113.16/28"`).
    pub fn ipv4(mut self, subnet: &str) -> Self {
        self.v4 = Some(subnet.to_owned());
        self
    }

    /// The IPv6 subnet of the link, inside 2001:db8::/32
    /// (e.g. `"2001:db8:1::/64"`).
    pub fn ipv6(mut self, subnet: &str) -> Self {
        self.v6 = Some(subnet.to_owned());
        self
    }

    /// Checks the ranges and creates the namespace, link and addresses.
    pub fn build(self) -> Result<TestHost> {
        let v4 = self
            .v4
            .as_deref()
            .map(|s| checked_subnet(s, false))
            .transpose()?;
        let v6 = self
            .v6
            .as_deref()
            .map(|s| checked_subnet(s, true))
            .transpose()?;
        for subnet in v4.iter().chain(v6.iter()) {
            ensure_unused(subnet)?;
        }
        let (pid, n) = (std::process::id(), next_serial());
        let host = TestHost {
            name: format!("{NETNS_PREFIX}{pid}-{n}"),
            outer: format!("{LINK_PREFIX}{pid}o{n}"),
            inner: format!("{LINK_PREFIX}{pid}i{n}"),
            v4,
            v6,
            removed: false,
        };
        if host.outer.len() > IFNAMSIZ_MAX {
            return Err(Error::BadOutput {
                what: "interface name".into(),
                output: format!("{} is longer than {IFNAMSIZ_MAX} bytes", host.outer),
            });
        }
        // From here on, dropping `host` undoes whatever part was created.
        host.create()?;
        Ok(host)
    }
}

/// Parses a subnet of the right family and checks it is a documentation
/// range with room for two hosts.
fn checked_subnet(text: &str, want_v6: bool) -> Result<Subnet> {
    let subnet: Subnet = text.parse()?;
    if subnet.is_ipv6() != want_v6 || subnet.nth(2).is_none() {
        return Err(Error::BadSubnet(text.to_owned()));
    }
    if !subnet.is_documentation() {
        return Err(Error::NotDocumentationRange(subnet.to_string()));
    }
    Ok(subnet)
}

#[derive(Deserialize)]
struct IpLink {
    ifname: String,
    #[serde(default)]
    addr_info: Vec<IpAddrInfo>,
    #[serde(default)]
    operstate: Option<String>,
}

#[derive(Deserialize)]
struct IpAddrInfo {
    local: Option<String>,
    prefixlen: Option<u8>,
}

#[derive(Deserialize)]
struct IpRoute {
    dst: String,
    dev: Option<String>,
    table: Option<String>,
}

/// Fails with [`Error::RangeInUse`] if any address or route of this
/// machine's namespace overlaps `subnet` (default routes aside).
pub fn ensure_unused(subnet: &Subnet) -> Result<()> {
    let family = if subnet.is_ipv6() { "-6" } else { "-4" };
    let links: Vec<IpLink> = parse_json("ip addr", &ip(&["-j", family, "addr", "show"])?)?;
    for link in &links {
        for info in &link.addr_info {
            let (Some(local), Some(len)) = (&info.local, info.prefixlen) else {
                continue;
            };
            let Ok(addr) = local.parse::<IpAddr>() else {
                continue;
            };
            let used =
                Subnet::new(addr, len).is_some_and(|s| s.overlaps(subnet)) || subnet.contains(addr);
            if used {
                return Err(Error::RangeInUse {
                    subnet: subnet.to_string(),
                    used_by: format!("address {local}/{len} on {}", link.ifname),
                });
            }
        }
    }
    let routes: Vec<IpRoute> = parse_json(
        "ip route",
        &ip(&["-j", family, "route", "show", "table", "all"])?,
    )?;
    for route in &routes {
        let Ok(dst) = route.dst.parse::<Subnet>() else {
            continue; // "default" and other non-prefix destinations
        };
        if dst.prefix() > 0 && dst.overlaps(subnet) {
            return Err(Error::RangeInUse {
                subnet: subnet.to_string(),
                used_by: format!(
                    "route {} dev {} table {}",
                    route.dst,
                    route.dev.as_deref().unwrap_or("?"),
                    route.table.as_deref().unwrap_or("main")
                ),
            });
        }
    }
    Ok(())
}

fn parse_json<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| Error::BadOutput {
        what: what.to_owned(),
        output: format!("{e}: {text}"),
    })
}

impl TestHost {
    /// Starts configuring a test host.
    pub fn builder() -> TestHostBuilder {
        TestHostBuilder::default()
    }

    /// A test host with one IPv4 and one IPv6 subnet.
    pub fn new(ipv4: &str, ipv6: &str) -> Result<Self> {
        Self::builder().ipv4(ipv4).ipv6(ipv6).build()
    }

    fn create(&self) -> Result<()> {
        let (ns, outer, inner) = (self.name.as_str(), self.outer.as_str(), self.inner.as_str());
        ip(&["netns", "add", ns])?;
        ip(&[
            "link", "add", outer, "type", "veth", "peer", "name", inner, "netns", ns,
        ])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&["link", "set", outer, "up"])?;
        ip(&["-n", ns, "link", "set", inner, "up"])?;
        for subnet in self.v4.iter().chain(self.v6.iter()) {
            let (local, remote) = link_addrs(subnet);
            let len = subnet.prefix();
            let (local, remote) = (format!("{local}/{len}"), format!("{remote}/{len}"));
            let family = if subnet.is_ipv6() { "-6" } else { "-4" };
            let mut add_local = vec![family, "addr", "add", &local, "dev", outer];
            let mut add_remote = vec!["-n", ns, family, "addr", "add", &remote, "dev", inner];
            if subnet.is_ipv6() {
                // Without nodad the address stays "tentative" for a second
                // or two and cannot be bound or reached.
                add_local.push("nodad");
                add_remote.push("nodad");
            }
            ip(&add_local)?;
            ip(&add_remote)?;
            let gateway = link_addrs(subnet).0.to_string();
            ip(&[
                "-n", ns, family, "route", "add", "default", "via", &gateway, "dev", inner,
            ])?;
        }
        self.wait_up()
    }

    /// Waits until both ends of the veth report carrier, so the first probe
    /// does not race the link coming up.
    fn wait_up(&self) -> Result<()> {
        let timeout = Duration::from_secs(3);
        let is_up = |args: &[&str]| {
            ip(args)
                .ok()
                .and_then(|text| serde_json::from_str::<Vec<IpLink>>(&text).ok())
                .is_some_and(|links| {
                    links
                        .iter()
                        .all(|l| matches!(l.operstate.as_deref(), Some("UP" | "UNKNOWN")))
                })
        };
        poll_until(timeout, || {
            (is_up(&["-j", "link", "show", &self.outer])
                && is_up(&["-n", &self.name, "-j", "link", "show", &self.inner]))
            .then_some(())
        })
        .ok_or_else(|| Error::Timeout {
            what: format!("veth {}/{} to come up", self.outer, self.inner),
            timeout,
        })
    }

    /// The namespace's name (`ip netns` / `ip -n NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`, the file to `setns` on.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// The veth end in this machine's namespace.
    pub fn outer_ifname(&self) -> &str {
        &self.outer
    }

    /// The veth end inside the test host.
    pub fn inner_ifname(&self) -> &str {
        &self.inner
    }

    /// The IPv4 subnet of the link, if one was configured.
    pub fn subnet_v4(&self) -> Option<Subnet> {
        self.v4
    }

    /// The IPv6 subnet of the link, if one was configured.
    pub fn subnet_v6(&self) -> Option<Subnet> {
        self.v6
    }

    /// The test host's IPv4 address (the subnet's second address).
    ///
    /// # Panics
    /// If the host was built without [`TestHostBuilder::ipv4`].
    pub fn ipv4(&self) -> IpAddr {
        link_addrs(&self.v4.expect("TestHost built without an IPv4 subnet")).1
    }

    /// The test host's IPv6 address (the subnet's second address).
    ///
    /// # Panics
    /// If the host was built without [`TestHostBuilder::ipv6`].
    pub fn ipv6(&self) -> IpAddr {
        link_addrs(&self.v6.expect("TestHost built without an IPv6 subnet")).1
    }

    /// This machine's IPv4 address on the link (the subnet's first).
    ///
    /// # Panics
    /// If the host was built without [`TestHostBuilder::ipv4`].
    pub fn local_ipv4(&self) -> IpAddr {
        link_addrs(&self.v4.expect("TestHost built without an IPv4 subnet")).0
    }

    /// This machine's IPv6 address on the link (the subnet's first).
    ///
    /// # Panics
    /// If the host was built without [`TestHostBuilder::ipv6`].
    pub fn local_ipv6(&self) -> IpAddr {
        link_addrs(&self.v6.expect("TestHost built without an IPv6 subnet")).0
    }

    /// `ipv4():port`.
    pub fn socket_v4(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ipv4(), port)
    }

    /// `[ipv6()]:port`.
    pub fn socket_v6(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ipv6(), port)
    }

    /// Gives the test host one more address (e.g. to stand for a second
    /// remote identity). An address outside the link's subnets also gets a
    /// host route from this machine through the link. It must be in a
    /// documentation range and not in use elsewhere on the machine.
    pub fn add_address(&self, addr: IpAddr) -> Result<()> {
        let host = Subnet::host(addr);
        if !host.is_documentation() {
            return Err(Error::NotDocumentationRange(host.to_string()));
        }
        let link = if addr.is_ipv6() { self.v6 } else { self.v4 };
        let Some(link) = link else {
            return Err(Error::BadSubnet(format!(
                "{addr} (the test host has no link subnet of that family)"
            )));
        };
        let on_link = link.contains(addr);
        if !on_link {
            ensure_unused(&host)?;
        }
        let family = if addr.is_ipv6() { "-6" } else { "-4" };
        let cidr = host.to_string();
        let mut add = vec!["-n", self.name.as_str(), family, "addr", "add", &cidr];
        add.extend(["dev", self.inner.as_str()]);
        if addr.is_ipv6() {
            add.push("nodad");
        }
        ip(&add)?;
        if !on_link {
            let via = link_addrs(&link).1.to_string();
            ip(&[
                family,
                "route",
                "add",
                &cidr,
                "via",
                &via,
                "dev",
                &self.outer,
            ])?;
        }
        Ok(())
    }

    /// Removes the test host now and reports whether it worked, unlike
    /// `Drop`, which can only print what went wrong.
    pub fn remove(mut self) -> Result<()> {
        self.removed = true;
        self.teardown()
    }

    fn teardown(&self) -> Result<()> {
        let mut problems = Vec::new();
        // Deleting the link is synchronous; deleting the namespace frees its
        // devices later, from a kernel work queue, so it alone would leave
        // the addresses around for a moment.
        if let Err(err) = delete_link(&self.outer) {
            problems.push(err.to_string());
        }
        if let Err(err) = delete_netns(&self.name) {
            problems.push(err.to_string());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Cleanup(problems.join("; ")))
        }
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if !self.removed
            && let Err(err) = self.teardown()
        {
            // Drop cannot return an error; stderr reaches the test output.
            eprintln!("enforcer-tests: removing test host {}: {err}", self.name);
        }
    }
}

/// (this machine's address, the test host's address) on a link subnet.
fn link_addrs(subnet: &Subnet) -> (IpAddr, IpAddr) {
    // `checked_subnet` guarantees both exist.
    let first = subnet.nth(1).unwrap_or(subnet.network());
    let second = subnet.nth(2).unwrap_or(subnet.network());
    (first, second)
}

/// Deletes a link in this machine's namespace; a missing one is fine.
pub(crate) fn delete_link(name: &str) -> Result<()> {
    match ip(&["link", "del", name]) {
        Err(_) if link_absent(name) => Ok(()),
        other => other.map(drop),
    }
}

fn link_absent(name: &str) -> bool {
    ip(&["link", "show", name]).is_err()
}

/// Deletes a named network namespace; a missing one is fine.
pub(crate) fn delete_netns(name: &str) -> Result<()> {
    let path = PathBuf::from("/run/netns").join(name);
    if !path.exists() {
        return Ok(());
    }
    match ip(&["netns", "del", name]) {
        Err(_) if !path.exists() => Ok(()),
        other => other.map(drop),
    }
}

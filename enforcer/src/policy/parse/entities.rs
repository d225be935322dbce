//! The grammar of `[workload.NAME]`, `[peer.NAME]` and `[[expect]]`.

use toml_edit::TableLike;

use super::RawExpectation;
use super::reader::FileParser;
use crate::policy::cgroup_selector::{CgroupSelector, UnitUser};
use crate::policy::diag::Loc;
use crate::policy::model::{Located, Peer, Workload};
use crate::policy::types::{Mode, Name, ServicePort, Verdict, parse_cidr};

const WORKLOAD_FIELDS: &[&str] = &["unit", "user", "cgroup", "delegated", "labels", "mode"];
const PEER_FIELDS: &[&str] = &["cidrs", "labels"];
const EXPECT_FIELDS: &[&str] = &["from", "to", "port", "verdict"];

impl FileParser<'_> {
    pub(super) fn workload(&mut self, name: Name, t: &dyn TableLike, at: &Loc) -> Option<Workload> {
        let what = format!("workload `{name}`");
        self.check_fields(t, WORKLOAD_FIELDS, &what, at);
        let unit = self.string(t, "unit", at);
        let cgroup = self.string(t, "cgroup", at);
        let selector = match (unit, cgroup) {
            (Some(_), Some((_, loc))) => {
                self.error(
                    &loc,
                    format!("{what} has both `unit` and `cgroup`: keep exactly one"),
                );
                CgroupSelector::Unit(String::new())
            }
            (None, None) => {
                if !t.contains_key("unit") && !t.contains_key("cgroup") {
                    self.error(
                        at,
                        format!("{what} needs `unit = \"NAME.service\"` or `cgroup = \"PATTERN\"`"),
                    );
                }
                CgroupSelector::Unit(String::new())
            }
            (Some((u, loc)), None) => match CgroupSelector::unit(u) {
                Ok(s) => s,
                Err(e) => {
                    self.error(&loc, e);
                    CgroupSelector::Unit(String::new())
                }
            },
            (None, Some((g, loc))) => match CgroupSelector::glob(g) {
                Ok(s) => s,
                Err(e) => {
                    self.error(&loc, e);
                    CgroupSelector::Unit(String::new())
                }
            },
        };
        let selector = self.selector_owner(selector, t, at, &what);
        let labels = self.labels(t, at);
        let mode = match self.string(t, "mode", at) {
            None => Mode::Enforce,
            Some((s, loc)) => s.parse().unwrap_or_else(|e: String| {
                self.error(&loc, e);
                Mode::Enforce
            }),
        };
        Some(Workload {
            name,
            loc: at.clone(),
            selector,
            labels,
            mode,
        })
    }

    /// Applies `user = ...` (to a `unit`) and `delegated = true` (to a
    /// `cgroup` pattern): who the selected cgroups may belong to.
    fn selector_owner(
        &mut self,
        selector: CgroupSelector,
        t: &dyn TableLike,
        at: &Loc,
        what: &str,
    ) -> CgroupSelector {
        let user = t
            .get("user")
            .map(|item| (item, self.item_loc(t, "user", item, at)));
        let delegated = self.boolean(t, "delegated", at);
        let delegated_loc = t
            .get("delegated")
            .map(|item| self.item_loc(t, "delegated", item, at));
        match selector {
            CgroupSelector::Unit(unit) => {
                if let Some(loc) = delegated_loc.filter(|_| delegated) {
                    self.error(
                        &loc,
                        format!(
                            "{what}: `delegated` applies to `cgroup` patterns; a user's unit is selected with `user = \"NAME\"`"
                        ),
                    );
                }
                let Some((item, loc)) = user else {
                    return CgroupSelector::Unit(unit);
                };
                let user = if let Some(name) = item.as_str() {
                    if name.is_empty() || name.contains(['/', ':', '\0']) {
                        self.error(
                            &loc,
                            format!("{what}: `user = {name:?}` is not a user name"),
                        );
                    }
                    UnitUser::Name(name.to_owned())
                } else if let Some(uid) = item.as_integer().and_then(|n| u32::try_from(n).ok()) {
                    UnitUser::Uid(uid)
                } else {
                    self.error(
                        &loc,
                        format!("{what}: `user` must be a user name (`user = \"alice\"`) or a uid (`user = 1000`)"),
                    );
                    UnitUser::Uid(0)
                };
                CgroupSelector::UserUnit { unit, user }
            }
            CgroupSelector::Glob(pattern) => {
                if let Some((_, loc)) = user {
                    self.error(
                        &loc,
                        format!(
                            "{what}: `user` applies to `unit`; a pattern selects cgroups of other users with `delegated = true`"
                        ),
                    );
                }
                if delegated {
                    CgroupSelector::DelegatedGlob(pattern)
                } else {
                    CgroupSelector::Glob(pattern)
                }
            }
            other => other,
        }
    }

    pub(super) fn peer(&mut self, name: Name, t: &dyn TableLike, at: &Loc) -> Option<Peer> {
        let what = format!("peer `{name}`");
        self.check_fields(t, PEER_FIELDS, &what, at);
        let mut cidrs = Vec::new();
        match t.get("cidrs") {
            None => self.error(at, format!("{what} needs `cidrs = [\"ADDRESS/LEN\", ...]`")),
            Some(item) => {
                let loc = self.item_loc(t, "cidrs", item, at);
                match item.as_array() {
                    None => self.error(
                        &loc,
                        "`cidrs` must be a list of strings: `cidrs = [\"203.0.113.0/24\"]`",
                    ),
                    Some(arr) if arr.is_empty() => self.error(
                        &loc,
                        format!("{what} has no CIDR: list at least one address or prefix"),
                    ),
                    Some(arr) => {
                        for v in arr {
                            let vloc = self.value_loc(v, &loc);
                            match v
                                .as_str()
                                .ok_or_else(|| "each CIDR must be a string".to_string())
                                .and_then(parse_cidr)
                            {
                                Ok(net) => cidrs.push((net, vloc)),
                                Err(e) => self.error(&vloc, e),
                            }
                        }
                    }
                }
            }
        }
        let labels = self.labels(t, at);
        Some(Peer {
            name,
            loc: at.clone(),
            cidrs,
            labels,
        })
    }

    pub(super) fn expectation(&mut self, t: &dyn TableLike, at: &Loc) -> RawExpectation {
        self.check_fields(t, EXPECT_FIELDS, "an expectation", at);
        let end = |p: &mut Self, key: &str| -> Option<Located<String>> {
            match p.string(t, key, at) {
                Some((s, loc)) => Some(Located {
                    value: s.to_owned(),
                    loc,
                }),
                None => {
                    if !t.contains_key(key) {
                        p.error(
                            at,
                            format!("expectation needs `{key}` (an entity name or an IP address)"),
                        );
                    }
                    None
                }
            }
        };
        let from = end(self, "from");
        let to = end(self, "to");
        let port = match self.string(t, "port", at) {
            None => {
                if !t.contains_key("port") {
                    self.error(
                        at,
                        "expectation needs `port = \"PORT/PROTO\"` or `port = \"icmp\"`",
                    );
                }
                None
            }
            Some((s, loc)) => match s.parse::<ServicePort>() {
                Ok(p) => Some(p),
                Err(e) => {
                    self.error(&loc, e);
                    None
                }
            },
        };
        let verdict = match self.string(t, "verdict", at) {
            None => {
                if !t.contains_key("verdict") {
                    self.error(
                        at,
                        "expectation needs `verdict = \"allow\"` or `verdict = \"deny\"`",
                    );
                }
                None
            }
            Some(("allow", _)) => Some(Verdict::Allow),
            Some(("deny", _)) => Some(Verdict::Deny),
            Some((s, loc)) => {
                self.error(
                    &loc,
                    format!("invalid verdict `{s}`: use \"allow\" or \"deny\""),
                );
                None
            }
        };
        RawExpectation {
            loc: at.clone(),
            from,
            to,
            port,
            verdict,
        }
    }
}

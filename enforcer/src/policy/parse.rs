//! One policy file: TOML (with spans) to model items. Checks everything
//! that one item can show by itself; what needs the whole set (duplicates,
//! selectors matching nothing) is `validate.rs`'s job.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::IpNet;
use toml_edit::{ImDocument, Item, Key, TableLike, Value};

use super::diag::{Diagnostic, LineIndex, Loc};
use super::model::{Labels, Located, Peer, Policy, PolicySet, Rule, Selector, Workload};
use super::types::{LabelKey, LabelValue, Mode, Name, PortSpec, ServicePort, Verdict};
use crate::compile::{CgroupSelector, Section, UnitUser};

/// An expectation whose names are not resolved yet (that needs every file).
#[derive(Clone, Debug)]
pub(crate) struct RawExpectation {
    pub loc: Loc,
    pub from: Option<Located<String>>,
    pub to: Option<Located<String>>,
    pub port: Option<ServicePort>,
    pub verdict: Option<Verdict>,
}

const TOP_FIELDS: &[&str] = &["workload", "peer", "policy", "expect"];
const WORKLOAD_FIELDS: &[&str] = &["unit", "user", "cgroup", "delegated", "labels", "mode"];
const PEER_FIELDS: &[&str] = &["cidrs", "labels"];
const POLICY_FIELDS: &[&str] = &[
    "name",
    "select",
    "optional",
    "allow-in",
    "allow-out",
    "deny-in",
    "deny-out",
];
const RULE_IN_FIELDS: &[&str] = &["from", "ports", "until", "optional"];
const RULE_OUT_FIELDS: &[&str] = &["to", "ports", "until", "optional"];
const EXPECT_FIELDS: &[&str] = &["from", "to", "port", "verdict"];
const SECTIONS: [Section; 4] = [
    Section::AllowIn,
    Section::AllowOut,
    Section::DenyIn,
    Section::DenyOut,
];

/// Parses one file's text into `set`, appending every problem to `diags`.
pub(crate) fn parse_file(
    path: &Path,
    text: &str,
    set: &mut PolicySet,
    expects: &mut Vec<RawExpectation>,
    diags: &mut Vec<Diagnostic>,
) {
    let idx = LineIndex::new(Arc::from(path), text);
    let doc = match ImDocument::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let loc = idx.loc(e.span().map_or(0, |s| s.start));
            let message = e.message().trim().replace('\n', " ");
            diags.push(Diagnostic::error(&loc, format!("invalid TOML: {message}")));
            return;
        }
    };
    let mut p = FileParser { idx, diags };
    p.file(doc.as_table(), set, expects);
}

struct FileParser<'a> {
    idx: LineIndex<'a>,
    diags: &'a mut Vec<Diagnostic>,
}

impl FileParser<'_> {
    fn error(&mut self, loc: &Loc, message: impl Into<String>) {
        self.diags.push(Diagnostic::error(loc, message));
    }

    fn loc_span(&self, span: Option<std::ops::Range<usize>>, fallback: &Loc) -> Loc {
        match span {
            Some(s) => self.idx.loc(s.start),
            None => fallback.clone(),
        }
    }

    fn key_loc(&self, table: &dyn TableLike, key: &str, fallback: &Loc) -> Loc {
        self.loc_span(table.key(key).and_then(Key::span), fallback)
    }

    /// The place of a field's value (or its key when the value has none).
    fn item_loc(&self, table: &dyn TableLike, key: &str, item: &Item, fallback: &Loc) -> Loc {
        let key_loc = self.key_loc(table, key, fallback);
        self.loc_span(item.span(), &key_loc)
    }

    fn value_loc(&self, value: &Value, fallback: &Loc) -> Loc {
        self.loc_span(value.span(), fallback)
    }

    /// Reports every key of `table` that is not in `allowed`.
    fn check_fields(&mut self, table: &dyn TableLike, allowed: &[&str], what: &str, at: &Loc) {
        for (key, _) in table.iter() {
            if allowed.contains(&key) {
                continue;
            }
            let loc = self.key_loc(table, key, at);
            let hint = match closest(key, allowed) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("valid fields: {}", allowed.join(", ")),
            };
            self.error(&loc, format!("unknown field `{key}` in {what}: {hint}"));
        }
    }

    fn file(
        &mut self,
        root: &toml_edit::Table,
        set: &mut PolicySet,
        expects: &mut Vec<RawExpectation>,
    ) {
        let start = self.idx.loc(0);
        self.check_fields(root, TOP_FIELDS, "a policy file", &start);
        if let Some(item) = root.get("workload") {
            let loc = self.item_loc(root, "workload", item, &start);
            self.named_tables(item, "workload", &loc, |p, name, t, at| {
                if let Some(w) = p.workload(name, t, at) {
                    set.workloads.push(w);
                }
            });
        }
        if let Some(item) = root.get("peer") {
            let loc = self.item_loc(root, "peer", item, &start);
            self.named_tables(item, "peer", &loc, |p, name, t, at| {
                if let Some(peer) = p.peer(name, t, at) {
                    set.peers.push(peer);
                }
            });
        }
        if let Some(item) = root.get("policy") {
            let loc = self.item_loc(root, "policy", item, &start);
            for (t, at) in self.table_list(item, "policy", &loc) {
                if let Some(policy) = self.policy(t, &at) {
                    set.policies.push(policy);
                }
            }
        }
        if let Some(item) = root.get("expect") {
            let loc = self.item_loc(root, "expect", item, &start);
            for (t, at) in self.table_list(item, "expect", &loc) {
                expects.push(self.expectation(t, &at));
            }
        }
    }

    /// `[workload.NAME]` / `[peer.NAME]`: a table of tables.
    fn named_tables(
        &mut self,
        item: &Item,
        kind: &str,
        at: &Loc,
        mut each: impl FnMut(&mut Self, Name, &dyn TableLike, &Loc),
    ) {
        let Some(table) = item.as_table_like() else {
            self.error(
                at,
                format!("`{kind}` must be a table of named {kind}s: write `[{kind}.NAME]`"),
            );
            return;
        };
        for (key, value) in table.iter() {
            let loc = self.key_loc(table, key, at);
            let name = match key.parse::<Name>() {
                Ok(n) => n,
                Err(e) => {
                    self.error(&loc, format!("{kind} name: {e}"));
                    continue;
                }
            };
            let Some(t) = value.as_table_like() else {
                self.error(
                    &loc,
                    format!("`{kind}.{key}` must be a table: write `[{kind}.{key}]`"),
                );
                continue;
            };
            each(self, name, t, &loc);
        }
    }

    /// `[[policy]]` / `[[expect]]`: an array of tables (or an inline array of
    /// inline tables).
    fn table_list<'t>(
        &mut self,
        item: &'t Item,
        kind: &str,
        at: &Loc,
    ) -> Vec<(&'t dyn TableLike, Loc)> {
        let mut out = Vec::new();
        if let Some(aot) = item.as_array_of_tables() {
            for t in aot.iter() {
                let loc = self.loc_span(t.span(), at);
                out.push((t as &dyn TableLike, loc));
            }
        } else if let Some(arr) = item.as_array() {
            for v in arr.iter() {
                let loc = self.value_loc(v, at);
                match v.as_inline_table() {
                    Some(t) => out.push((t as &dyn TableLike, loc)),
                    None => self.error(
                        &loc,
                        format!("each `{kind}` must be a table: write `[[{kind}]]`"),
                    ),
                }
            }
        } else {
            self.error(
                at,
                format!("`{kind}` must be an array of tables: write `[[{kind}]]`"),
            );
        }
        out
    }

    fn string<'t>(
        &mut self,
        table: &'t dyn TableLike,
        key: &str,
        at: &Loc,
    ) -> Option<(&'t str, Loc)> {
        let item = table.get(key)?;
        let loc = self.item_loc(table, key, item, at);
        match item.as_str() {
            Some(s) => Some((s, loc)),
            None => {
                self.error(&loc, format!("`{key}` must be a string"));
                None
            }
        }
    }

    fn boolean(&mut self, table: &dyn TableLike, key: &str, at: &Loc) -> bool {
        let Some(item) = table.get(key) else {
            return false;
        };
        match item.as_bool() {
            Some(b) => b,
            None => {
                let loc = self.item_loc(table, key, item, at);
                self.error(&loc, format!("`{key}` must be `true` or `false`"));
                false
            }
        }
    }

    fn labels(&mut self, table: &dyn TableLike, at: &Loc) -> Labels {
        let mut labels = Labels::new();
        let Some(item) = table.get("labels") else {
            return labels;
        };
        let loc = self.item_loc(table, "labels", item, at);
        let Some(t) = item.as_table_like() else {
            self.error(
                &loc,
                "`labels` must be a table of strings: `labels = { app = \"web\" }`",
            );
            return labels;
        };
        for (k, v) in t.iter() {
            let kloc = self.key_loc(t, k, &loc);
            let vloc = self.item_loc(t, k, v, &loc);
            let key = match k.parse::<LabelKey>() {
                Ok(k) => k,
                Err(e) => {
                    self.error(&kloc, e);
                    continue;
                }
            };
            let Some(s) = v.as_str() else {
                self.error(&vloc, format!("label `{k}` must be a string value"));
                continue;
            };
            match s.parse::<LabelValue>() {
                Ok(v) => {
                    labels.insert(key, v);
                }
                Err(e) => self.error(&vloc, e),
            }
        }
        labels
    }

    fn workload(&mut self, name: Name, t: &dyn TableLike, at: &Loc) -> Option<Workload> {
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

    fn peer(&mut self, name: Name, t: &dyn TableLike, at: &Loc) -> Option<Peer> {
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
                        for v in arr.iter() {
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

    fn policy(&mut self, t: &dyn TableLike, at: &Loc) -> Option<Policy> {
        let name = match self.string(t, "name", at) {
            None => {
                if !t.contains_key("name") {
                    self.error(at, "policy needs a `name = \"NAME\"`");
                }
                None
            }
            Some((s, loc)) => match s.parse::<Name>() {
                Ok(n) => Some((n, loc)),
                Err(e) => {
                    self.error(&loc, format!("policy name: {e}"));
                    None
                }
            },
        };
        let what = match &name {
            Some((n, _)) => format!("policy `{n}`"),
            None => "a policy".to_string(),
        };
        self.check_fields(t, POLICY_FIELDS, &what, at);
        let select = match t.get("select") {
            None => {
                self.error(
                    at,
                    format!("{what} needs `select`, e.g. `select = {{ app = \"web\" }}`"),
                );
                Vec::new()
            }
            Some(item) => {
                let loc = self.item_loc(t, "select", item, at);
                let values = self.selector_values(item, "select", &loc);
                if values.is_empty() {
                    self.error(
                        &loc,
                        "`select` is empty: name the workloads this policy governs",
                    );
                }
                let mut out = Vec::new();
                for (v, vloc) in values {
                    match self.selector(v, &vloc) {
                        Some(s @ (Selector::Labels(_) | Selector::Workload(_))) => out.push(Located { value: s, loc: vloc }),
                        Some(_) => self.error(
                            &vloc,
                            "`select` picks the workloads a policy governs: use a label table or \"workload:NAME\"",
                        ),
                        None => {}
                    }
                }
                out
            }
        };
        let optional = self.boolean(t, "optional", at);
        let mut rules = Vec::new();
        for section in SECTIONS {
            let key = section.as_str();
            let Some(item) = t.get(key) else { continue };
            let loc = self.item_loc(t, key, item, at);
            let Some(arr) = item.as_array() else {
                self.error(
                    &loc,
                    format!("`{key}` must be a list of rules: `{key} = [ {{ ... }} ]`"),
                );
                continue;
            };
            for (index, v) in arr.iter().enumerate() {
                let vloc = self.value_loc(v, &loc);
                match v.as_inline_table() {
                    None => self.error(
                        &vloc,
                        format!("each `{key}` rule must be a table `{{ ... }}`"),
                    ),
                    Some(rt) => {
                        if let Some(rule) = self.rule(section, index, rt, &vloc) {
                            rules.push(rule);
                        }
                    }
                }
            }
        }
        let (name, _) = name?;
        Some(Policy {
            name,
            loc: at.clone(),
            select,
            rules,
            optional,
        })
    }

    fn rule(
        &mut self,
        section: Section,
        index: usize,
        t: &dyn TableLike,
        at: &Loc,
    ) -> Option<Rule> {
        let inbound = matches!(section, Section::AllowIn | Section::DenyIn);
        let (field, other, fields) = if inbound {
            ("from", "to", RULE_IN_FIELDS)
        } else {
            ("to", "from", RULE_OUT_FIELDS)
        };
        let what = format!("a `{}` rule", section.as_str());
        for (key, _) in t.iter() {
            if key == other {
                let loc = self.key_loc(t, key, at);
                self.error(
                    &loc,
                    format!("{what} names its remote end with `{field}`, not `{other}`"),
                );
            } else if !fields.contains(&key) {
                let loc = self.key_loc(t, key, at);
                let hint = match closest(key, fields) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("valid fields: {}", fields.join(", ")),
                };
                self.error(&loc, format!("unknown field `{key}` in {what}: {hint}"));
            }
        }
        let mut remotes = Vec::new();
        match t.get(field) {
            None => {
                if !t.contains_key(other) {
                    self.error(
                        at,
                        format!(
                            "{what} needs `{field}`: use `{field} = [\"any\"]` to match everything"
                        ),
                    );
                }
            }
            Some(item) => {
                let loc = self.item_loc(t, field, item, at);
                let values = self.selector_values(item, field, &loc);
                if values.is_empty() {
                    self.error(
                        &loc,
                        format!("`{field}` is empty: list at least one selector"),
                    );
                }
                for (v, vloc) in values {
                    if let Some(s) = self.selector(v, &vloc) {
                        remotes.push(Located {
                            value: s,
                            loc: vloc,
                        });
                    }
                }
            }
        }
        let ports = match t.get("ports") {
            None => None,
            Some(item) => {
                let loc = self.item_loc(t, "ports", item, at);
                let mut out = Vec::new();
                match item.as_array() {
                    None => self.error(&loc, "`ports` must be a list of strings: `ports = [\"443/tcp\"]`"),
                    Some(arr) if arr.is_empty() => {
                        self.error(&loc, "`ports` is empty: list at least one port, or remove `ports` to match every port")
                    }
                    Some(arr) => {
                        for v in arr.iter() {
                            let vloc = self.value_loc(v, &loc);
                            let parsed = match v {
                                Value::String(s) => s.value().parse::<PortSpec>(),
                                Value::Integer(i) => Err(format!(
                                    "write ports as strings with their protocol: \"{}/tcp\"",
                                    i.value()
                                )),
                                _ => Err("each port must be a string like \"443/tcp\"".to_string()),
                            };
                            match parsed {
                                Ok(p) => out.push(p),
                                Err(e) => self.error(&vloc, e),
                            }
                        }
                    }
                }
                Some(out)
            }
        };
        let until = match t.get("until") {
            None => None,
            Some(item) => {
                let loc = self.item_loc(t, "until", item, at);
                let parsed = match item {
                    Item::Value(Value::String(s)) => parse_rfc3339(s.value()),
                    Item::Value(Value::Datetime(d)) => datetime_to_system(d.value()),
                    _ => Err(
                        "`until` must be an RFC 3339 time string, e.g. \"2026-12-31T18:00:00Z\""
                            .into(),
                    ),
                };
                match parsed {
                    Ok(time) => Some(Located { value: time, loc }),
                    Err(e) => {
                        self.error(&loc, e);
                        None
                    }
                }
            }
        };
        let optional = self.boolean(t, "optional", at);
        Some(Rule {
            section,
            index,
            loc: at.clone(),
            remotes,
            ports,
            until,
            optional,
        })
    }

    /// A selector list (or one selector on its own).
    fn selector_values<'t>(
        &mut self,
        item: &'t Item,
        _field: &str,
        at: &Loc,
    ) -> Vec<(&'t Value, Loc)> {
        match item {
            Item::Value(Value::Array(arr)) => {
                arr.iter().map(|v| (v, self.value_loc(v, at))).collect()
            }
            Item::Value(v) => vec![(v, self.value_loc(v, at))],
            _ => {
                self.error(at, "a selector must be a label table `{ app = \"web\" }` or a name such as \"world\"");
                Vec::new()
            }
        }
    }

    fn selector(&mut self, v: &Value, at: &Loc) -> Option<Selector> {
        match v {
            Value::String(s) => match parse_selector_name(s.value()) {
                Ok(sel) => Some(sel),
                Err(e) => {
                    self.error(at, e);
                    None
                }
            },
            Value::InlineTable(t) => {
                if t.is_empty() {
                    self.error(
                        at,
                        "empty label selector: add labels, or use \"any\" to match everything",
                    );
                    return None;
                }
                let mut table = BTreeMap::new();
                let mut ok = true;
                let t: &dyn TableLike = t;
                for (k, item) in t.iter() {
                    let kloc = self.key_loc(t, k, at);
                    let vloc = self.item_loc(t, k, item, at);
                    let key = match k.parse::<LabelKey>() {
                        Ok(k) => k,
                        Err(e) => {
                            self.error(&kloc, e);
                            ok = false;
                            continue;
                        }
                    };
                    let mut values = Vec::new();
                    match item {
                        Item::Value(Value::String(s)) => values.push(s.value().as_str()),
                        Item::Value(Value::Array(arr)) => {
                            if arr.is_empty() {
                                self.error(
                                    &vloc,
                                    format!(
                                        "label `{k}` has an empty list of values: list at least one"
                                    ),
                                );
                                ok = false;
                            }
                            for e in arr.iter() {
                                match e.as_str() {
                                    Some(s) => values.push(s),
                                    None => {
                                        let eloc = self.value_loc(e, &vloc);
                                        self.error(
                                            &eloc,
                                            format!("values of label `{k}` must be strings"),
                                        );
                                        ok = false;
                                    }
                                }
                            }
                        }
                        _ => {
                            self.error(
                                &vloc,
                                format!("label `{k}` must be a string or a list of strings"),
                            );
                            ok = false;
                        }
                    }
                    let mut parsed = Vec::new();
                    for s in values {
                        match s.parse::<LabelValue>() {
                            Ok(v) => parsed.push(v),
                            Err(e) => {
                                self.error(&vloc, e);
                                ok = false;
                            }
                        }
                    }
                    parsed.sort();
                    parsed.dedup();
                    table.insert(key, parsed);
                }
                ok.then_some(Selector::Labels(table))
            }
            _ => {
                self.error(at, "a selector must be a label table `{ app = \"web\" }` or a name such as \"world\"");
                None
            }
        }
    }

    fn expectation(&mut self, t: &dyn TableLike, at: &Loc) -> RawExpectation {
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

/// `"world"`, `"host"`, `"any"`, `"workload:NAME"` or `"peer:NAME"`.
pub(crate) fn parse_selector_name(s: &str) -> Result<Selector, String> {
    match s {
        "world" => return Ok(Selector::World),
        "host" => return Ok(Selector::Host),
        "any" => return Ok(Selector::Any),
        _ => {}
    }
    if let Some(name) = s.strip_prefix("workload:") {
        return name.parse().map(Selector::Workload);
    }
    if let Some(name) = s.strip_prefix("peer:") {
        return name.parse().map(Selector::Peer);
    }
    if s.parse::<IpNet>().is_ok() || s.parse::<IpAddr>().is_ok() {
        return Err(format!(
            "\"{s}\" is an address, not a selector: declare a peer with `cidrs = [\"{s}\"]` and use \"peer:NAME\""
        ));
    }
    let hint = match closest(s, &["world", "host", "any"]) {
        Some(r) => format!("did you mean \"{r}\"?"),
        None if s.parse::<Name>().is_ok() => {
            format!("to name an entity write \"workload:{s}\" or \"peer:{s}\"")
        }
        None => "write a label table or a name".to_string(),
    };
    Err(format!(
        "unknown selector \"{s}\": {hint} (selectors are label tables, \"world\", \"host\", \"any\", \"workload:NAME\" or \"peer:NAME\")"
    ))
}

/// A CIDR, or a host address without a length.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    if s.contains('/') {
        let net: IpNet = s.parse().map_err(|_| {
            format!("invalid CIDR `{s}`: write ADDRESS/LEN, e.g. \"203.0.113.0/24\" or \"2001:db8::/32\"")
        })?;
        if net.trunc() != net {
            return Err(format!(
                "CIDR `{s}` has bits set after its /{} prefix: did you mean \"{}\"?",
                net.prefix_len(),
                net.trunc()
            ));
        }
        Ok(net)
    } else {
        let addr: IpAddr = s.parse().map_err(|_| {
            format!(
                "invalid address `{s}`: write an IP address or ADDRESS/LEN, e.g. \"198.51.100.17\""
            )
        })?;
        Ok(IpNet::from(addr))
    }
}

/// An RFC 3339 date-time with an offset.
pub fn parse_rfc3339(s: &str) -> Result<SystemTime, String> {
    s.parse::<toml_edit::Datetime>()
        .ok()
        .and_then(|dt| crate::rfc3339::from_toml(&dt))
        .ok_or_else(|| {
            format!("invalid time `{s}`: write an RFC 3339 time with its offset, e.g. \"2026-12-31T18:00:00Z\"")
        })
}

fn datetime_to_system(dt: &toml_edit::Datetime) -> Result<SystemTime, String> {
    crate::rfc3339::from_toml(dt).ok_or_else(|| {
        format!(
            "`until` needs a full date, time and offset, e.g. \"2026-12-31T18:00:00Z\" (got `{dt}`)"
        )
    })
}

/// The candidate closest to `word`, if it is close enough to be a typo.
pub(crate) fn closest<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3) && *d < c.len().max(word.len()))
        .min()
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_convert_to_unix_time() {
        let t = parse_rfc3339("2026-12-31T18:00:00Z").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            1_798_740_000
        );
        let t2 = parse_rfc3339("2026-12-31T20:00:00+02:00").unwrap();
        assert_eq!(t, t2);
        assert_eq!(
            parse_rfc3339("1970-01-01T00:00:00Z").unwrap(),
            SystemTime::UNIX_EPOCH
        );
        for bad in [
            "2026-12-31",
            "18:00:00",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-12-31T18:00:00",
            "soon",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn cidrs_accept_host_addresses_and_reject_host_bits() {
        assert_eq!(
            parse_cidr("198.51.100.17").unwrap().to_string(),
            "198.51.100.17/32"
        );
        assert_eq!(
            parse_cidr("2001:db8::1").unwrap().to_string(),
            "2001:db8::1/128"
        );
        assert!(parse_cidr("203.0.113.0/24").is_ok());
        assert!(
            parse_cidr("203.0.113.1/24")
                .unwrap_err()
                .contains("203.0.113.0/24")
        );
        assert!(parse_cidr("203.0.113.0/33").is_err());
        assert!(parse_cidr("300.0.0.0/8").is_err());
    }

    #[test]
    fn closest_suggests_typos_only() {
        assert_eq!(closest("lables", &["labels", "mode"]), Some("labels"));
        assert_eq!(closest("worl", &["world", "host", "any"]), Some("world"));
        assert_eq!(closest("zzzzzz", &["labels", "mode"]), None);
    }
}

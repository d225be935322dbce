//! The grammar of `[[policy]]`: its `select`, its four rule sections and
//! the selectors they use.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::SystemTime;

use ipnet::IpNet;
use toml_edit::{Item, TableLike, Value};

use super::reader::FileParser;
use crate::policy::diag::Loc;
use crate::policy::model::{Located, Policy, Rule, Section, Selector};
use crate::policy::suggest::closest;
use crate::policy::time::until_time;
use crate::policy::types::{LabelKey, LabelValue, Name, PortSpec};

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

impl FileParser<'_> {
    pub(super) fn policy(&mut self, t: &dyn TableLike, at: &Loc) -> Option<Policy> {
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
        for section in Section::ALL {
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
                self.unknown_field(t, key, fields, &what, at);
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
        let ports = self.ports(t, at);
        let until = self.until(t, at);
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

    /// `ports = [...]`; `None` when omitted (every protocol and port).
    fn ports(&mut self, t: &dyn TableLike, at: &Loc) -> Option<Vec<PortSpec>> {
        match t.get("ports") {
            None => None,
            Some(item) => {
                let loc = self.item_loc(t, "ports", item, at);
                let mut out = Vec::new();
                match item.as_array() {
                    None => self.error(
                        &loc,
                        "`ports` must be a list of strings: `ports = [\"443/tcp\"]`",
                    ),
                    Some(arr) if arr.is_empty() => {
                        self.error(&loc, "`ports` is empty: list at least one port, or remove `ports` to match every port");
                    }
                    Some(arr) => {
                        for v in arr {
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
        }
    }

    /// `until = TIME`, when given and valid.
    fn until(&mut self, t: &dyn TableLike, at: &Loc) -> Option<Located<SystemTime>> {
        match t.get("until") {
            None => None,
            Some(item) => {
                let loc = self.item_loc(t, "until", item, at);
                match until_time(item) {
                    Ok(time) => Some(Located { value: time, loc }),
                    Err(e) => {
                        self.error(&loc, e);
                        None
                    }
                }
            }
        }
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
                            for e in arr {
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
}

/// `"world"`, `"host"`, `"any"`, `"workload:NAME"` or `"peer:NAME"`.
fn parse_selector_name(s: &str) -> Result<Selector, String> {
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

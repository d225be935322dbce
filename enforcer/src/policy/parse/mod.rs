//! One policy file: TOML (with spans) to model items. Checks everything
//! that one item can show by itself; what needs the whole set (duplicates,
//! selectors matching nothing) is `validate.rs`'s job.
//!
//! [`reader`] reads typed fields and reports where they are wrong; the
//! grammar is in [`entities`] (workloads, peers, expectations) and
//! [`rules`] (policies, their rules and selectors).

mod entities;
mod reader;
mod rules;

use std::path::Path;

use toml_edit::ImDocument;

use super::diag::{Diagnostic, Loc};
use super::model::{Located, PolicySet};
use super::types::{ServicePort, Verdict};
use reader::FileParser;

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

/// Parses one file's text into `set`, appending every problem to `diags`.
pub(crate) fn parse_file(
    path: &Path,
    text: &str,
    set: &mut PolicySet,
    expects: &mut Vec<RawExpectation>,
    diags: &mut Vec<Diagnostic>,
) {
    let mut p = FileParser::new(path, text, diags);
    let doc = match ImDocument::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let loc = p.loc(e.span().map_or(0, |s| s.start));
            let message = e.message().trim().replace('\n', " ");
            p.error(&loc, format!("invalid TOML: {message}"));
            return;
        }
    };
    p.file(doc.as_table(), set, expects);
}

impl FileParser<'_> {
    fn file(
        &mut self,
        root: &toml_edit::Table,
        set: &mut PolicySet,
        expects: &mut Vec<RawExpectation>,
    ) {
        let start = self.loc(0);
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
}

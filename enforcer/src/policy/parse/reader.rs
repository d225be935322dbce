//! The TOML accessor layer of the parser: typed fields of a table, each
//! problem reported at the place it was written.

use std::path::Path;
use std::sync::Arc;

use toml_edit::{Item, Key, TableLike, Value};

use crate::policy::diag::{Diagnostic, LineIndex, Loc};
use crate::policy::model::Labels;
use crate::policy::suggest::closest;
use crate::policy::types::{LabelKey, LabelValue, Name};

/// Reads one file's tables, appending every problem to `diags`.
pub(super) struct FileParser<'a> {
    file: Arc<Path>,
    lines: LineIndex<'a>,
    diags: &'a mut Vec<Diagnostic>,
}

impl<'a> FileParser<'a> {
    pub(super) fn new(path: &Path, text: &'a str, diags: &'a mut Vec<Diagnostic>) -> Self {
        FileParser {
            file: Arc::from(path),
            lines: LineIndex::new(text),
            diags,
        }
    }

    /// The place of a byte offset of the file.
    pub(super) fn loc(&self, offset: usize) -> Loc {
        let (line, col) = self.lines.line_col(offset);
        Loc {
            file: self.file.clone(),
            line,
            col,
        }
    }

    pub(super) fn error(&mut self, loc: &Loc, message: impl Into<String>) {
        self.diags.push(Diagnostic::error(loc, message));
    }

    pub(super) fn loc_span(&self, span: Option<std::ops::Range<usize>>, fallback: &Loc) -> Loc {
        match span {
            Some(s) => self.loc(s.start),
            None => fallback.clone(),
        }
    }

    pub(super) fn key_loc(&self, table: &dyn TableLike, key: &str, fallback: &Loc) -> Loc {
        self.loc_span(table.key(key).and_then(Key::span), fallback)
    }

    /// The place of a field's value (or its key when the value has none).
    pub(super) fn item_loc(
        &self,
        table: &dyn TableLike,
        key: &str,
        item: &Item,
        fallback: &Loc,
    ) -> Loc {
        let key_loc = self.key_loc(table, key, fallback);
        self.loc_span(item.span(), &key_loc)
    }

    pub(super) fn value_loc(&self, value: &Value, fallback: &Loc) -> Loc {
        self.loc_span(value.span(), fallback)
    }

    /// Reports every key of `table` that is not in `allowed`.
    pub(super) fn check_fields(
        &mut self,
        table: &dyn TableLike,
        allowed: &[&str],
        what: &str,
        at: &Loc,
    ) {
        for (key, _) in table.iter() {
            if !allowed.contains(&key) {
                self.unknown_field(table, key, allowed, what, at);
            }
        }
    }

    /// Reports `key` of `table` as no field of `what`, suggesting the
    /// closest of `allowed`.
    pub(super) fn unknown_field(
        &mut self,
        table: &dyn TableLike,
        key: &str,
        allowed: &[&str],
        what: &str,
        at: &Loc,
    ) {
        let loc = self.key_loc(table, key, at);
        let hint = match closest(key, allowed) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!("valid fields: {}", allowed.join(", ")),
        };
        self.error(&loc, format!("unknown field `{key}` in {what}: {hint}"));
    }

    /// `[workload.NAME]` / `[peer.NAME]`: a table of tables.
    pub(super) fn named_tables(
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
    pub(super) fn table_list<'t>(
        &mut self,
        item: &'t Item,
        kind: &str,
        at: &Loc,
    ) -> Vec<(&'t dyn TableLike, Loc)> {
        let mut out = Vec::new();
        if let Some(aot) = item.as_array_of_tables() {
            for t in aot {
                let loc = self.loc_span(t.span(), at);
                out.push((t as &dyn TableLike, loc));
            }
        } else if let Some(arr) = item.as_array() {
            for v in arr {
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

    pub(super) fn string<'t>(
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

    pub(super) fn boolean(&mut self, table: &dyn TableLike, key: &str, at: &Loc) -> bool {
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

    pub(super) fn labels(&mut self, table: &dyn TableLike, at: &Loc) -> Labels {
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
}

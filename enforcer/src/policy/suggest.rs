//! "Did you mean": the closest of the valid words to a misspelt one.

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
    fn closest_suggests_typos_only() {
        assert_eq!(closest("lables", &["labels", "mode"]), Some("labels"));
        assert_eq!(closest("worl", &["world", "host", "any"]), Some("world"));
        assert_eq!(closest("zzzzzz", &["labels", "mode"]), None);
    }
}

//! Did-you-mean: the closest of a set of known names to a misspelt one, offered
//! only when it is close enough to be a likely typo rather than noise.

/// The candidate closest to `word`, if it is within a small edit distance
/// (about a third of the word's length, at least one edit). Case is ignored.
pub(crate) fn closest<'a, I>(word: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let word_lower = word.to_lowercase();
    let budget = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .filter(|c| *c != word)
        .map(|c| {
            (
                strsim::damerau_levenshtein(&word_lower, &c.to_lowercase()),
                c,
            )
        })
        .filter(|(d, _)| *d <= budget)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// ` (did you mean `x`?)`, or nothing when no candidate is close.
pub(crate) fn hint<'a, I>(word: &str, candidates: I) -> String
where
    I: IntoIterator<Item = &'a str>,
{
    closest(word, candidates)
        .map(|c| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_names_are_suggested() {
        assert_eq!(
            closest("pat", ["path", "path_prefix", "hosts"]),
            Some("path")
        );
        assert_eq!(closest("usres", ["users", "orders"]), Some("users"));
        assert_eq!(
            closest("round_robbin", ["round_robin", "random"]),
            Some("round_robin")
        );
        assert_eq!(closest("Upstream", ["upstream"]), Some("upstream"));
    }

    #[test]
    fn distant_names_are_not() {
        assert_eq!(closest("zzz", ["path", "hosts"]), None);
        assert_eq!(closest("billing", ["users", "orders"]), None);
        assert_eq!(hint("x", Vec::<&str>::new()), "");
    }

    #[test]
    fn hint_reads_as_a_suffix() {
        assert_eq!(hint("pat", ["path"]), " (did you mean `path`?)");
    }
}

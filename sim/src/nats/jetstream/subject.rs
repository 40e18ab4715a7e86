//! Subjects and names as JetStream judges them: which subjects a filter matches, whether two
//! filters overlap, and which stream and consumer names are valid.
//!
//! Streams may not capture overlapping subjects, a consumer's filter must lie within its
//! stream's subjects, and a published message goes to the stream whose subjects match it; all
//! three questions are answered here, by the same token rules as nats-server (`*` matches one
//! token, `>` the rest, and only as whole tokens).

/// Whether `name` is a valid stream or consumer name: not empty, and no `.`, `*`, `>` or
/// whitespace.
pub(crate) fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| matches!(c, ' ' | '\t' | '\r' | '\n' | '\x0c' | '.' | '*' | '>'))
}

/// Whether `subject` is a valid subject or filter: non-empty tokens, no whitespace, `>` only
/// as the last token.
pub(crate) fn is_valid_subject(subject: &str) -> bool {
    if subject.is_empty() || subject.chars().any(char::is_whitespace) {
        return false;
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    let last = tokens.len() - 1;
    tokens
        .iter()
        .enumerate()
        .all(|(index, token)| !token.is_empty() && (*token != ">" || index == last))
}

fn is_wildcard(token: &str) -> bool {
    token == "*" || token == ">"
}

/// Whether `subject` has no wildcard token.
pub(crate) fn is_literal(subject: &str) -> bool {
    !subject.split('.').any(is_wildcard)
}

/// Whether the filter `filter` matches the literal subject `subject`.
pub(crate) fn matches(filter: &str, subject: &str) -> bool {
    is_subset(subject, filter)
}

/// Whether every subject `subject` matches is also matched by `test` (`subject` may itself
/// hold wildcards).
pub(crate) fn is_subset(subject: &str, test: &str) -> bool {
    let tokens: Vec<&str> = subject.split('.').collect();
    let test: Vec<&str> = test.split('.').collect();
    for (index, wanted) in test.iter().enumerate() {
        let Some(token) = tokens.get(index) else {
            return false;
        };
        if wanted.is_empty() {
            return false;
        }
        if *wanted == ">" {
            return true;
        }
        if token.is_empty() || *token == ">" {
            return false;
        }
        if *token == "*" {
            if *wanted != "*" {
                return false;
            }
            continue;
        }
        if *wanted != "*" && token != wanted {
            return false;
        }
    }
    tokens.len() == test.len()
}

/// Whether some subject matches both `a` and `b`.
pub(crate) fn collide(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    let first: Vec<&str> = a.split('.').collect();
    let second: Vec<&str> = b.split('.').collect();
    let literal_a = is_literal(a);
    let literal_b = is_literal(b);
    match (literal_a, literal_b) {
        (true, true) => return false,
        (true, false) => return is_subset(a, b),
        (false, true) => return is_subset(b, a),
        (false, false) => {}
    }
    let tail_a = first.last() == Some(&">");
    let tail_b = second.last() == Some(&">");
    if first.len() != second.len() {
        // The shorter one must end in `>` to reach the longer one's tokens.
        if (first.len() < second.len() && !tail_a) || (second.len() < first.len() && !tail_b) {
            return false;
        }
    }
    first
        .iter()
        .zip(&second)
        .all(|(x, y)| is_wildcard(x) || is_wildcard(y) || x == y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_refuse_subject_characters() {
        assert!(is_valid_name("HUBBUS"));
        assert!(is_valid_name("hubbus_a-1"));
        for bad in ["", "a.b", "a*", "a>", "a b"] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn filters_match_by_whole_tokens() {
        assert!(matches("a.>", "a.b.c"));
        assert!(matches("a.*", "a.b"));
        assert!(!matches("a.*", "a.b.c"));
        assert!(!matches("a.>", "a"));
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "a.bc"));
    }

    #[test]
    fn subsets_and_collisions_follow_the_server() {
        assert!(is_subset("a.b.>", "a.>"));
        assert!(is_subset("a.*", "a.>"));
        assert!(!is_subset("a.>", "a.*"));
        assert!(!is_subset("b.>", "a.>"));
        assert!(collide("a.>", "a.b"));
        assert!(collide("a.*", "*.b"));
        assert!(!collide("a.*", "a.b.c"));
        assert!(collide("a.>", "*.b.c"));
        assert!(!collide("a.b", "a.c"));
    }

    #[test]
    fn subjects_need_full_tokens() {
        assert!(is_valid_subject("a.>"));
        assert!(!is_valid_subject("a.>.b"));
        assert!(!is_valid_subject("a..b"));
        assert!(!is_valid_subject(""));
        assert!(!is_valid_subject("a b"));
    }
}

//! NATS subjects by nats-server's rules: which subjects a client may subscribe to, which it may
//! publish to, and which subscriptions a published subject reaches.
//!
//! A subject is a list of tokens separated by `.`. In a subscription, `*` (as a whole token)
//! matches any one token and `>` (only as the last token) matches one or more. A published
//! subject is taken literally; nats-server delivers a publish to a subject with an empty token
//! to nobody, so [`matches`] does the same.

/// Whether `subject` is a valid subscription subject: no empty token and nothing after `>`.
/// nats-server answers anything else with `-ERR 'Invalid Subject'`.
pub(super) fn is_valid_subscription(subject: &str) -> bool {
    let mut after_full_wildcard = false;
    for token in subject.split('.') {
        if token.is_empty() || after_full_wildcard {
            return false;
        }
        after_full_wildcard = token == ">";
    }
    true
}

/// Whether `subject` is a valid literal subject: no empty token and no wildcard. A pedantic
/// client publishing anywhere else gets `-ERR 'Invalid Publish Subject'`.
pub(super) fn is_valid_literal(subject: &str) -> bool {
    subject
        .split('.')
        .all(|token| !token.is_empty() && token != "*" && token != ">")
}

/// Whether a message published to `subject` reaches a subscription on `pattern`.
pub(super) fn matches(pattern: &str, subject: &str) -> bool {
    if subject.split('.').any(str::is_empty) {
        return false;
    }
    let mut tokens = subject.split('.');
    for wanted in pattern.split('.') {
        if wanted == ">" {
            return tokens.next().is_some();
        }
        match tokens.next() {
            Some(token) if wanted == "*" || wanted == token => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_need_whole_tokens_and_a_final_full_wildcard() {
        for valid in [
            "a",
            "a.b",
            "a.*",
            "*",
            ">",
            "a.>",
            "*.*.>",
            "a*",
            "a.b>",
            "$JS.API.>",
        ] {
            assert!(is_valid_subscription(valid), "{valid}");
        }
        for invalid in ["", ".", "a.", ".a", "a..b", "a.>.b", ">.a"] {
            assert!(!is_valid_subscription(invalid), "{invalid}");
        }
    }

    #[test]
    fn literal_subjects_have_no_wildcard_token() {
        assert!(is_valid_literal("a.b"));
        assert!(
            is_valid_literal("a*.b>"),
            "wildcards only count as whole tokens"
        );
        for invalid in ["", "a..b", "a.*", ">", "a.>"] {
            assert!(!is_valid_literal(invalid), "{invalid}");
        }
    }

    #[test]
    fn wildcards_match_one_token_or_the_rest() {
        let cases = [
            ("a.b", "a.b", true),
            ("a.b", "a.c", false),
            ("a.*", "a.b", true),
            ("a.*", "a.b.c", false),
            ("a.*", "a", false),
            ("a.>", "a.b", true),
            ("a.>", "a.b.c", true),
            ("a.>", "a", false),
            (">", "a", true),
            ("*", "a", true),
            ("*", "a.b", false),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.b.d", false),
            ("a.*", "a.*", true),
            ("a.b", "a.b.c", false),
            ("a.>", "a..b", false),
            (">", "a.", false),
        ];
        for (pattern, subject, expected) in cases {
            assert_eq!(
                matches(pattern, subject),
                expected,
                "{pattern} vs {subject}"
            );
        }
    }
}

//! Bayeux channel names: which names are valid (for subscribing, wildcards allowed in the
//! last segment; for publishing, none), how a subscription pattern matches a concrete
//! channel, and how a name is cut short for an error message. Pure functions, so the
//! rules the hub enforces are tested here without a session.

/// Longest channel name accepted, in bytes.
pub(super) const MAX_CHANNEL_LEN: usize = 256;

/// A channel name for error messages, cut short.
pub(super) fn truncate(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((end, _)) => format!("{}...", &s[..end]),
        None => s.to_owned(),
    }
}

/// `Ok` when `name` is a valid channel: `/seg/seg...`, non-empty segments of printable
/// characters; with `wildcards`, the last segment may be `*` or `**`.
pub(super) fn validate_channel(name: &str, wildcards: bool) -> Result<(), &'static str> {
    if name.len() > MAX_CHANNEL_LEN {
        return Err("Channel name too long");
    }
    let Some(rest) = name.strip_prefix('/') else {
        return Err("Invalid channel");
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        if seg.is_empty() || seg.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("Invalid channel");
        }
        if seg.contains('*') {
            let wildcard_ok = wildcards && i == last && (*seg == "*" || *seg == "**");
            if !wildcard_ok {
                return Err("Invalid channel");
            }
        }
    }
    Ok(())
}

/// Whether subscription `pattern` matches the concrete `channel`: exact, `/a/*` (one more
/// segment) or `/a/**` (one or more).
pub(super) fn channel_matches(pattern: &str, channel: &str) -> bool {
    if let Some(prefix) = pattern.strip_suffix("/**") {
        channel
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix('/'))
            .is_some_and(|rest| !rest.is_empty())
    } else if let Some(prefix) = pattern.strip_suffix("/*") {
        channel
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix('/'))
            .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
    } else {
        pattern == channel
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_matching_and_validation() {
        assert!(channel_matches("/a/*", "/a/b"));
        assert!(!channel_matches("/a/*", "/a/b/c"));
        assert!(!channel_matches("/a/*", "/a"));
        assert!(!channel_matches("/a/*", "/ab/c"));
        assert!(channel_matches("/a/**", "/a/b/c"));
        assert!(!channel_matches("/a/**", "/a"));
        assert!(!channel_matches("/a/**", "/ab/c"));
        assert!(channel_matches("/**", "/x/y"));
        assert!(channel_matches("/a", "/a"));
        for ok in ["/a", "/a/b", "/a/*", "/a/**", "/**"] {
            assert!(validate_channel(ok, true).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a",
            "/",
            "/a/",
            "//a",
            "/a b",
            "/a/*/b",
            "/a*",
            "/a/***",
            &format!("/{}", "x".repeat(300)),
        ] {
            assert!(validate_channel(bad, true).is_err(), "{bad}");
        }
        assert!(validate_channel("/a/*", false).is_err());
    }
}

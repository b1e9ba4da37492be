//! Room patterns: which rooms a permission covers. A pattern is an exact
//! room name (`lobby`), `*` (every room), or a prefix followed by `*`
//! (`sensors.*`), which covers every room whose name starts with the prefix
//! and goes on: `sensors.*` matches `sensors.a` and `sensors.a.b` but not
//! `sensors` itself, because the `*` stands for at least one character.
//! Grant `sensors` as well to cover both.
//!
//! Patterns use the room-name alphabet ([`crate::hub::normalize_room`]) and
//! its length bound, so a pattern that could never match a room is refused
//! where it is written (a flag or a token), not silently ignored.

use std::fmt;
use std::str::FromStr;

use crate::hub::MAX_ROOM_NAME;

/// Which rooms a permission covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// `*`: every room.
    Any,
    /// One room, by its exact name.
    Exact(Box<str>),
    /// `prefix*`: every room that starts with the prefix and is longer
    /// than it. Holds the prefix without the `*`.
    Prefix(Box<str>),
}

impl Pattern {
    /// Whether `room` (already normalised: the default room by its name)
    /// is covered.
    pub fn matches(&self, room: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(name) => **name == *room,
            Pattern::Prefix(prefix) => room.len() > prefix.len() && room.starts_with(&**prefix),
        }
    }

    /// Whether any of `patterns` covers `room`.
    pub fn any_matches(patterns: &[Pattern], room: &str) -> bool {
        patterns.iter().any(|p| p.matches(room))
    }
}

impl FromStr for Pattern {
    /// A short reason that does not repeat the text (it may come from a
    /// token); the caller adds where the pattern was written.
    type Err = &'static str;

    fn from_str(text: &str) -> Result<Pattern, &'static str> {
        if text == "*" {
            return Ok(Pattern::Any);
        }
        let (name, prefix) = match text.strip_suffix('*') {
            Some(prefix) => (prefix, true),
            None => (text, false),
        };
        if name.is_empty() {
            return Err("a room pattern is empty");
        }
        // A prefix pattern matches names one longer than its prefix at
        // least, so its prefix may be one shorter than a room name.
        if name.len() + usize::from(prefix) > MAX_ROOM_NAME {
            return Err("a room pattern is longer than a room name can be");
        }
        if name.contains('*') {
            return Err("'*' may only end a room pattern");
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(
                "a room pattern may only contain A-Z, a-z, 0-9, '.', '_', '-' and a final '*'",
            );
        }
        Ok(if prefix {
            Pattern::Prefix(name.into())
        } else {
            Pattern::Exact(name.into())
        })
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Any => f.write_str("*"),
            Pattern::Exact(name) => f.write_str(name),
            Pattern::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(text: &str) -> Pattern {
        text.parse().unwrap()
    }

    #[test]
    fn star_matches_every_room() {
        for room in ["default", "a", "sensors.a.b", "x-y_z"] {
            assert!(p("*").matches(room));
        }
    }

    #[test]
    fn exact_name_matches_only_itself() {
        let lobby = p("lobby");
        assert!(lobby.matches("lobby"));
        assert!(!lobby.matches("lobby2"));
        assert!(!lobby.matches("lobb"));
        assert!(!lobby.matches("Lobby"));
    }

    #[test]
    fn prefix_matches_longer_names_but_not_the_prefix_itself() {
        let sensors = p("sensors.*");
        assert_eq!(sensors, Pattern::Prefix("sensors.".into()));
        assert!(sensors.matches("sensors.a"));
        assert!(sensors.matches("sensors.a.b"));
        assert!(!sensors.matches("sensors"));
        assert!(!sensors.matches("sensors."));
        assert!(!sensors.matches("sensorsx"));
        assert!(!sensors.matches("other.sensors.a"));
        // Without the dot, the prefix is just text.
        assert!(p("team-*").matches("team-blue"));
        assert!(!p("team-*").matches("team"));
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for bad in [
            "",
            "a*b",
            "**",
            "*a",
            "sensors.**",
            "white space",
            "é",
            "a/b",
        ] {
            assert!(bad.parse::<Pattern>().is_err(), "{bad:?}");
        }
        let long = "a".repeat(MAX_ROOM_NAME + 1);
        assert!(long.parse::<Pattern>().is_err());
        assert!("a".repeat(MAX_ROOM_NAME).parse::<Pattern>().is_ok());
        assert!(format!("{}*", "a".repeat(MAX_ROOM_NAME - 1))
            .parse::<Pattern>()
            .is_ok());
        assert!(format!("{}*", "a".repeat(MAX_ROOM_NAME))
            .parse::<Pattern>()
            .is_err());
    }

    #[test]
    fn any_matches_looks_at_every_pattern() {
        let list = vec![p("lobby"), p("sensors.*")];
        assert!(Pattern::any_matches(&list, "lobby"));
        assert!(Pattern::any_matches(&list, "sensors.t1"));
        assert!(!Pattern::any_matches(&list, "admin"));
        assert!(!Pattern::any_matches(&[], "lobby"));
    }

    proptest! {
        #[test]
        fn display_parses_back_to_the_same_pattern(text in "[A-Za-z0-9._-]{1,63}\\*?|\\*") {
            let pattern = p(&text);
            prop_assert_eq!(pattern.to_string(), text.clone());
            prop_assert_eq!(p(&pattern.to_string()), pattern);
        }

        #[test]
        fn a_prefix_pattern_matches_exactly_the_longer_names_it_starts(
            prefix in "[a-z.]{1,8}",
            room in "[a-z.]{1,12}",
        ) {
            let pattern = p(&format!("{prefix}*"));
            prop_assert_eq!(
                pattern.matches(&room),
                room.len() > prefix.len() && room.starts_with(&prefix)
            );
        }
    }
}

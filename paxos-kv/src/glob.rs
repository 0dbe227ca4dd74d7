//! Redis's glob patterns (`KEYS`, `SCAN MATCH`, `CONFIG GET`): `*` any
//! run of bytes, `?` one byte, `[abc]`, `[^abc]`, `[a-z]` one byte of a set,
//! `\x` the byte `x` literally. Matching is on bytes and case-sensitive.
//!
//! Edge cases follow Redis's `stringmatchlen` (a proptest checks this one
//! against a transcription of it): a `\` at the end of the
//! pattern is a literal `\`; a `[` with no closing `]` takes the rest of
//! the pattern as its set; inside a set `\x` is `x`, `]` right after `[`
//! (or `[^`) closes an empty set, and a reversed range `[z-a]` means
//! `[a-z]`.
//!
//! A pattern is compiled once per command into tokens that each match one
//! byte except `*`, so matching a key is a loop with one backtrack point
//! (the last `*`), linear in practice and never recursive, and allocates
//! nothing per key.

/// A compiled pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    tokens: Vec<Token>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    /// Any run of bytes, possibly empty.
    Star,
    /// Any one byte.
    Any,
    /// This byte.
    Byte(u8),
    /// One byte in (or, negated, not in) the set.
    Set {
        negated: bool,
        /// Inclusive byte ranges (a single byte is `(b, b)`).
        ranges: Vec<(u8, u8)>,
    },
}

impl Token {
    fn matches(&self, b: u8) -> bool {
        match self {
            Token::Star | Token::Any => true,
            Token::Byte(x) => *x == b,
            Token::Set { negated, ranges } => {
                ranges.iter().any(|&(lo, hi)| lo <= b && b <= hi) != *negated
            }
        }
    }
}

impl Pattern {
    /// Compiles `pattern`. Every byte string is a valid pattern.
    pub fn new(pattern: &[u8]) -> Pattern {
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < pattern.len() {
            match pattern[i] {
                b'*' => {
                    if tokens.last() != Some(&Token::Star) {
                        tokens.push(Token::Star);
                    }
                }
                b'?' => tokens.push(Token::Any),
                b'\\' if i + 1 < pattern.len() => {
                    i += 1;
                    tokens.push(Token::Byte(pattern[i]));
                }
                b'[' => {
                    i += 1;
                    let negated = pattern.get(i) == Some(&b'^');
                    if negated {
                        i += 1;
                    }
                    let mut ranges = Vec::new();
                    // Ends on the closing `]`, or at the end of the pattern.
                    while i < pattern.len() && pattern[i] != b']' {
                        if pattern[i] == b'\\' && i + 1 < pattern.len() {
                            i += 1;
                            ranges.push((pattern[i], pattern[i]));
                        } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' {
                            let (a, b) = (pattern[i], pattern[i + 2]);
                            ranges.push((a.min(b), a.max(b)));
                            i += 2;
                        } else {
                            ranges.push((pattern[i], pattern[i]));
                        }
                        i += 1;
                    }
                    tokens.push(Token::Set { negated, ranges });
                }
                b => tokens.push(Token::Byte(b)),
            }
            i += 1;
        }
        Pattern { tokens }
    }

    /// True for `*`, which every string matches (callers skip matching).
    pub fn matches_everything(&self) -> bool {
        self.tokens == [Token::Star]
    }

    /// Whether `s` matches the whole pattern. As in Redis, the empty
    /// string matches only the empty pattern (Redis's `KEYS *` and
    /// `SCAN MATCH *` skip matching, so there the empty key is listed: use
    /// [`Pattern::matches_everything`] the same way).
    pub fn matches(&self, s: &[u8]) -> bool {
        let t = &self.tokens;
        if s.is_empty() {
            return t.is_empty();
        }
        let (mut ti, mut si) = (0usize, 0usize);
        // After a `*`: the token after it, and where in `s` it was last
        // tried. On a mismatch the star swallows one more byte. One star
        // suffices: a later star can absorb anything an earlier one would.
        let mut resume: Option<(usize, usize)> = None;
        while si < s.len() {
            match t.get(ti) {
                Some(Token::Star) => {
                    ti += 1;
                    resume = Some((ti, si));
                }
                Some(tok) if tok.matches(s[si]) => {
                    ti += 1;
                    si += 1;
                }
                _ => match resume {
                    Some((after_star, tried)) => {
                        ti = after_star;
                        si = tried + 1;
                        resume = Some((after_star, si));
                    }
                    None => return false,
                },
            }
        }
        t[ti..].iter().all(|tok| *tok == Token::Star)
    }
}

/// Whether `s` matches `pattern` (compiles it: for one-off matches).
pub fn matches(pattern: &[u8], s: &[u8]) -> bool {
    Pattern::new(pattern).matches(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A direct, recursive transcription of Redis's `stringmatchlen`
    /// (util.c), case-sensitive: the reference the compiled matcher must
    /// agree with.
    fn reference(p: &[u8], s: &[u8]) -> bool {
        let (mut p, mut s) = (p, s);
        while !p.is_empty() && !s.is_empty() {
            match p[0] {
                b'*' => {
                    while p.len() > 1 && p[1] == b'*' {
                        p = &p[1..];
                    }
                    if p.len() == 1 {
                        return true;
                    }
                    while !s.is_empty() {
                        if reference(&p[1..], s) {
                            return true;
                        }
                        s = &s[1..];
                    }
                    return false;
                }
                b'?' => s = &s[1..],
                b'[' => {
                    p = &p[1..];
                    let not = p.first() == Some(&b'^');
                    if not {
                        p = &p[1..];
                    }
                    let mut matched = false;
                    loop {
                        if p.len() >= 2 && p[0] == b'\\' {
                            p = &p[1..];
                            if p[0] == s[0] {
                                matched = true;
                            }
                        } else if p.first() == Some(&b']') {
                            break;
                        } else if p.is_empty() {
                            // Redis steps back onto the last byte here so
                            // that the `p++` below leaves the pattern empty.
                            break;
                        } else if p.len() >= 3 && p[1] == b'-' {
                            let (mut lo, mut hi) = (p[0], p[2]);
                            if lo > hi {
                                std::mem::swap(&mut lo, &mut hi);
                            }
                            p = &p[2..];
                            if lo <= s[0] && s[0] <= hi {
                                matched = true;
                            }
                        } else if p[0] == s[0] {
                            matched = true;
                        }
                        p = &p[1..];
                    }
                    if matched == not {
                        return false;
                    }
                    s = &s[1..];
                }
                b'\\' if p.len() >= 2 => {
                    if p[1] != s[0] {
                        return false;
                    }
                    p = &p[1..];
                    s = &s[1..];
                }
                c => {
                    if c != s[0] {
                        return false;
                    }
                    s = &s[1..];
                }
            }
            // Every arm that did not return consumed one pattern byte
            // (the set arm stands on its `]` or ran out).
            p = if p.is_empty() { p } else { &p[1..] };
            if s.is_empty() {
                while p.first() == Some(&b'*') {
                    p = &p[1..];
                }
                break;
            }
        }
        p.is_empty() && s.is_empty()
    }

    #[test]
    fn redis_examples() {
        for (p, s, want) in [
            (&b"*"[..], &b"anything"[..], true),
            (b"*", b"", false),
            (b"h?llo", b"hello", true),
            (b"h?llo", b"hllo", false),
            (b"h*llo", b"hllo", true),
            (b"h*llo", b"heeeello", true),
            (b"h[ae]llo", b"hallo", true),
            (b"h[ae]llo", b"hillo", false),
            (b"h[^e]llo", b"hallo", true),
            (b"h[^e]llo", b"hello", false),
            (b"h[a-b]llo", b"hbllo", true),
            (b"h[b-a]llo", b"hallo", true),
            (b"h\\*llo", b"h*llo", true),
            (b"h\\*llo", b"hello", false),
            (b"a\\", b"a\\", true),
            (b"[]a", b"a", false),
            (b"[^]a", b"xa", true),
            (b"[abc", b"c", true),
            (b"[a\\]]", b"]", true),
            (b"user:*:name", b"user:42:name", true),
            (b"user:*:name", b"user:42:names", false),
            (b"*a*b", b"xxaxxbxxb", true),
            (b"", b"", true),
            (b"", b"a", false),
        ] {
            assert_eq!(
                matches(p, s),
                want,
                "{:?} on {:?}",
                String::from_utf8_lossy(p),
                String::from_utf8_lossy(s)
            );
            assert_eq!(reference(p, s), want, "reference, {p:?} on {s:?}");
        }
        assert!(Pattern::new(b"**").matches_everything());
        assert!(!Pattern::new(b"a*").matches_everything());
    }

    /// Patterns and strings over a small alphabet full of special bytes,
    /// so stars, sets, ranges and escapes meet often.
    fn small(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(prop::sample::select(&b"ab-*?[]^\\"[..]), 0..max)
    }

    proptest! {
        #[test]
        fn agrees_with_redis_stringmatchlen(p in small(8), s in small(8)) {
            prop_assert_eq!(matches(&p, &s), reference(&p, &s));
        }

        #[test]
        fn a_string_matches_itself_escaped(s in proptest::collection::vec(any::<u8>(), 0..16)) {
            let mut p = Vec::new();
            for &b in &s {
                p.push(b'\\');
                p.push(b);
            }
            prop_assert!(matches(&p, &s));
        }
    }
}

//! Finding where one JSON value ends in a byte stream, without parsing it.
//!
//! The control socket carries JSON values back to back (no framing). A poll-based
//! server receives them in arbitrary pieces, so before handing a value to
//! `serde_json` it must know the value is complete. [`Scanner`] tracks just enough
//! of the syntax for that (strings with their escapes, bracket depth, where a bare
//! number or literal ends) and counts the elements of a top-level array (the calls of
//! a batch), in one pass over bytes as they arrive: the work is linear in the input
//! and its state is a few integers, whatever the nesting. It does not validate:
//! `serde_json` does that once the value is complete (a mismatched `{]` is a
//! complete value here and a parse error there).

/// What [`Scanner::scan`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// The value is not complete yet: feed more bytes.
    Incomplete,
    /// A value occupies `start..end` of the bytes scanned since the last reset
    /// (whitespace before it excluded); `elements` is its number of top-level
    /// elements when it is an array (0 for `[]`), else 0.
    Complete {
        /// First byte of the value.
        start: usize,
        /// One past its last byte.
        end: usize,
        /// Elements of a top-level array.
        elements: usize,
    },
    /// The byte at `at` cannot start a JSON value.
    Invalid {
        /// Offset of the byte.
        at: usize,
        /// The byte.
        byte: u8,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// Before a value (whitespace skipped).
    #[default]
    Between,
    /// Inside an object or array, outside strings.
    Nested,
    /// Inside a string; `escape` after a backslash.
    Str { escape: bool },
    /// A bare number or literal at the top level: ends at the first delimiter.
    Bare,
}

/// Incremental scanner over one stream's bytes (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct Scanner {
    state: State,
    /// Bytes examined so far.
    pos: usize,
    start: usize,
    depth: u32,
    /// The top-level value is an array.
    array: bool,
    /// Commas directly inside the top-level array.
    commas: usize,
    /// Something other than whitespace directly inside the top-level array.
    content: bool,
}

impl Scanner {
    /// Forgets everything (the caller removed the bytes scanned so far).
    pub fn reset(&mut self) {
        *self = Scanner::default();
    }

    /// Continues over `buf` (the same bytes as before, with more appended) and reports
    /// the first complete value. After [`Scan::Complete`] or [`Scan::Invalid`] the
    /// caller removes the bytes it consumed and calls [`reset`](Scanner::reset).
    pub fn scan(&mut self, buf: &[u8]) -> Scan {
        while self.pos < buf.len() {
            let b = buf[self.pos];
            match self.state {
                State::Between => match b {
                    b' ' | b'\t' | b'\n' | b'\r' => {}
                    b'{' | b'[' => {
                        self.start = self.pos;
                        self.depth = 1;
                        self.array = b == b'[';
                        self.state = State::Nested;
                    }
                    b'"' => {
                        self.start = self.pos;
                        self.state = State::Str { escape: false };
                    }
                    b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => {
                        self.start = self.pos;
                        self.state = State::Bare;
                    }
                    byte => return Scan::Invalid { at: self.pos, byte },
                },
                State::Bare => {
                    if matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'{' | b'}' | b'[' | b']' | b',' | b':' | b'"') {
                        return Scan::Complete { start: self.start, end: self.pos, elements: 0 };
                    }
                }
                State::Str { escape } => {
                    self.state = match (escape, b) {
                        (true, _) => State::Str { escape: false },
                        (false, b'\\') => State::Str { escape: true },
                        (false, b'"') if self.depth == 0 => {
                            self.pos += 1;
                            return Scan::Complete { start: self.start, end: self.pos, elements: 0 };
                        }
                        (false, b'"') => State::Nested,
                        (false, _) => State::Str { escape: false },
                    };
                }
                State::Nested => match b {
                    b'"' => {
                        self.note_content();
                        self.state = State::Str { escape: false };
                    }
                    b'{' | b'[' => {
                        self.note_content();
                        self.depth += 1;
                    }
                    b'}' | b']' => {
                        self.depth -= 1;
                        if self.depth == 0 {
                            self.pos += 1;
                            let elements = if !self.array {
                                0
                            } else if self.content {
                                self.commas + 1
                            } else {
                                self.commas
                            };
                            return Scan::Complete { start: self.start, end: self.pos, elements };
                        }
                    }
                    b',' if self.depth == 1 => self.commas += 1,
                    b' ' | b'\t' | b'\n' | b'\r' => {}
                    _ => self.note_content(),
                },
            }
            self.pos += 1;
        }
        Scan::Incomplete
    }

    fn note_content(&mut self) {
        if self.depth == 1 {
            self.content = true;
        }
    }

    /// Whether a value has started (bytes other than whitespace were seen).
    pub fn in_value(&self) -> bool {
        self.state != State::Between
    }

    /// Whether the value under way is a bare number or literal at the top level (it
    /// ends at the next delimiter, or at the end of the stream).
    pub fn in_bare_value(&self) -> bool {
        self.state == State::Bare
    }

    /// Elements of the top-level array counted so far (a lower bound while the
    /// value is incomplete).
    pub fn elements_so_far(&self) -> usize {
        if self.array {
            self.commas + usize::from(self.content)
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits `input` into values the way the server does, feeding it `piece` bytes at
    /// a time.
    fn values(input: &[u8], piece: usize) -> Vec<(String, usize)> {
        let mut s = Scanner::default();
        let (mut buf, mut out) = (Vec::new(), Vec::new());
        for chunk in input.chunks(piece.max(1)) {
            buf.extend_from_slice(chunk);
            loop {
                match s.scan(&buf) {
                    Scan::Incomplete => break,
                    Scan::Complete { start, end, elements } => {
                        out.push((String::from_utf8_lossy(&buf[start..end]).into_owned(), elements));
                        buf.drain(..end);
                        s.reset();
                    }
                    Scan::Invalid { at, byte } => {
                        out.push((format!("invalid {byte:#x}"), at));
                        return out;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn values_end_where_json_says_in_pieces_of_any_size() {
        let input = br#" {"a":"}\"{","b":[1,{"c":"]"}]}[1, 2,{"x":[3,4]}] [] [ ] [{}]42 "s\"q" true{"n":null}
"#;
        let want = vec![
            (r#"{"a":"}\"{","b":[1,{"c":"]"}]}"#.to_string(), 0),
            (r#"[1, 2,{"x":[3,4]}]"#.to_string(), 3),
            ("[]".to_string(), 0),
            ("[ ]".to_string(), 0),
            ("[{}]".to_string(), 1),
            ("42".to_string(), 0),
            (r#""s\"q""#.to_string(), 0),
            ("true".to_string(), 0),
            (r#"{"n":null}"#.to_string(), 0),
        ];
        for piece in 1..=input.len() {
            assert_eq!(values(input, piece), want, "piece {piece}");
        }
    }

    #[test]
    fn bad_starts_and_counts() {
        assert_eq!(values(b"  \x00\xffnot json", 100), vec![("invalid 0x0".to_string(), 2)]);
        assert_eq!(values(b"}", 1), vec![("invalid 0x7d".to_string(), 0)]);
        let mut s = Scanner::default();
        assert_eq!(s.scan(b"[1,2,3"), Scan::Incomplete);
        assert!(s.in_value());
        assert_eq!(s.elements_so_far(), 3);
        let deep = "[".repeat(100_000);
        let mut s = Scanner::default();
        assert_eq!(s.scan(deep.as_bytes()), Scan::Incomplete, "deep nesting costs no stack");
        assert_eq!(s.elements_so_far(), 1);
        // A number at the end of the input is not known to be complete.
        assert_eq!(Scanner::default().scan(b"123"), Scan::Incomplete);
        assert!(!Scanner::default().in_value());
    }
}

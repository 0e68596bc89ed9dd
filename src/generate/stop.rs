//! Turning generated token bytes into text deltas: whole UTF-8 characters only, and nothing
//! that could still turn out to be the start of a stop string (stop strings may span tokens).

/// Incremental text of one sequence.
pub struct TextStream {
    /// Complete characters decoded so far.
    text: String,
    /// Bytes of an unfinished character (at most 3).
    pending: Vec<u8>,
    /// Bytes of `text` already handed out as deltas.
    emitted: usize,
    stops: Vec<String>,
    longest_stop: usize,
}

/// What one token changed.
#[derive(Debug, PartialEq, Eq)]
pub enum Delta {
    /// Text that is final (possibly empty while a character or a stop-string prefix is open).
    Text(String),
    /// A stop string was completed: the text before it, and the sequence is finished.
    Stopped(String),
}

impl TextStream {
    /// A stream that ends at the first occurrence of any of `stops` (empty strings ignored).
    pub fn new(stops: &[String]) -> Self {
        let stops: Vec<String> = stops.iter().filter(|s| !s.is_empty()).cloned().collect();
        Self {
            longest_stop: stops.iter().map(String::len).max().unwrap_or(0),
            stops,
            text: String::new(),
            pending: Vec::new(),
            emitted: 0,
        }
    }

    /// Adds a token's bytes; returns the new final text.
    pub fn push(&mut self, bytes: &[u8]) -> Delta {
        let before = self.text.len();
        self.pending.extend_from_slice(bytes);
        self.decode_pending();
        if let Some(at) = self.find_stop(before) {
            let delta = self.text[self.emitted..at].to_string();
            self.text.truncate(at);
            self.emitted = at;
            return Delta::Stopped(delta);
        }
        let hold = self.open_stop_prefix();
        let end = self.text.len() - hold;
        let delta = self.text[self.emitted..end.max(self.emitted)].to_string();
        self.emitted = end.max(self.emitted);
        Delta::Text(delta)
    }

    /// At the end of a sequence not ended by a stop string: everything not yet emitted (an
    /// unfinished character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        if !self.pending.is_empty() {
            self.text.push_str(&String::from_utf8_lossy(&self.pending));
            self.pending.clear();
        }
        let delta = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        delta
    }

    /// The whole text so far (after a stop: up to the stop string).
    pub fn text(&self) -> &str {
        &self.text
    }

    fn decode_pending(&mut self) {
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    self.text.push_str(s);
                    self.pending.clear();
                    return;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // The first `valid_up_to` bytes are valid UTF-8 by definition.
                    self.text
                        .push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        // Bytes that can never be valid: one replacement character, go on.
                        Some(bad) => {
                            self.text.push('\u{FFFD}');
                            self.pending.drain(..valid + bad);
                        }
                        // An unfinished character: wait for the next token.
                        None => {
                            self.pending.drain(..valid);
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Earliest stop-string match that ends in the text added since `before`.
    fn find_stop(&self, before: usize) -> Option<usize> {
        if self.stops.is_empty() {
            return None;
        }
        let mut from = before.saturating_sub(self.longest_stop);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        self.stops
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min()
    }

    /// Length of the longest suffix of the text that is a proper prefix of a stop string.
    fn open_stop_prefix(&self) -> usize {
        let mut best = 0;
        for stop in &self.stops {
            for len in (1..stop.len()).rev() {
                if len <= best {
                    break;
                }
                if stop.is_char_boundary(len) && self.text.ends_with(&stop[..len]) {
                    best = len;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&[u8]]) -> (Vec<Delta>, String) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut s = TextStream::new(&stops);
        let deltas = pieces.iter().map(|p| s.push(p)).collect();
        (deltas, s.text().to_string())
    }

    #[test]
    fn characters_split_across_tokens_are_emitted_whole() {
        let euro = "€".as_bytes();
        let (deltas, text) = run(&[], &[b"a", &euro[..1], &euro[1..2], &euro[2..], b"b"]);
        assert_eq!(
            deltas,
            [
                Delta::Text("a".into()),
                Delta::Text(String::new()),
                Delta::Text(String::new()),
                Delta::Text("€".into()),
                Delta::Text("b".into())
            ]
        );
        assert_eq!(text, "a€b");
    }

    #[test]
    fn stop_string_across_tokens_is_held_back_then_cut() {
        let (deltas, text) = run(&["END"], &[b"hello E", b"N", b"D more"]);
        assert_eq!(
            deltas,
            [
                Delta::Text("hello ".into()),
                Delta::Text(String::new()),
                Delta::Stopped(String::new())
            ]
        );
        assert_eq!(text, "hello ");
    }

    #[test]
    fn a_false_start_is_released() {
        let (deltas, _) = run(&["END"], &[b"E", b"x"]);
        assert_eq!(
            deltas,
            [Delta::Text(String::new()), Delta::Text("Ex".into())]
        );
    }

    #[test]
    fn invalid_bytes_become_replacement_characters_and_finish_flushes() {
        let stops = vec![];
        let mut s = TextStream::new(&stops);
        assert_eq!(s.push(&[0xFF, b'a']), Delta::Text("\u{FFFD}a".into()));
        assert_eq!(s.push(&[0xE2, 0x82]), Delta::Text(String::new()));
        assert_eq!(s.finish(), "\u{FFFD}");
    }
}

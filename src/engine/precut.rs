//! Cutting over-long text before it is tokenized (issue 12, "memory amplification").
//!
//! The tokenizer encodes the whole text before it truncates: for a 1.9 MB input it builds the
//! normalized string with a per-byte alignment table and every overflow window of tokens, about
//! 100 MiB that is thrown away again, and that memory stays with the allocator afterwards.
//! When an input will be truncated anyway, only its first (or last) `max_length` tokens matter,
//! so we encode a window of the text that is a few times longer than those tokens can be, cut at
//! a whitespace boundary.
//!
//! Why the result is the same as tokenizing the whole text: the pre-tokenizers of the supported
//! families (BERT's whitespace/punctuation split, Metaspace, ByteLevel) split at whitespace, and
//! their normalizers work per character, so the tokens of the words before a whitespace do not
//! depend on what follows it. The cut is accepted only when the window alone already overflows
//! the limit; otherwise (text that is mostly whitespace, or very long "words") the window grows
//! fourfold until it does or covers the whole text. Tests compare against whole-text encodings.

/// Which end of an over-long text is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// The start (the end is cut).
    Start,
    /// The end (the start is cut).
    End,
}

/// Bytes of text per allowed token in the first window: four times the longest English
/// WordPiece token, so ordinary text overflows the limit within the first window.
pub const FIRST_WINDOW_BYTES_PER_TOKEN: usize = 64;

/// The windows of `text` to try, smallest first, each a whitespace-bounded part of `text` that
/// keeps the requested end, followed by the whole text. Only one entry (the whole text) when
/// the text is not longer than the first window.
pub fn windows(text: &str, max_tokens: usize, keep: Keep) -> Vec<&str> {
    let mut limit = max_tokens
        .saturating_mul(FIRST_WINDOW_BYTES_PER_TOKEN)
        .max(FIRST_WINDOW_BYTES_PER_TOKEN);
    let mut windows = Vec::new();
    while limit < text.len() {
        if let Some(window) = window(text, limit, keep) {
            if windows
                .last()
                .is_none_or(|last: &&str| last.len() < window.len())
            {
                windows.push(window);
            }
        }
        limit = limit.saturating_mul(4);
    }
    windows.push(text);
    windows
}

/// At most `limit` bytes from the kept end of `text`, ending (or starting) just before (after) a
/// whitespace character, so that no word is split; `None` when that part holds no whitespace.
fn window(text: &str, limit: usize, keep: Keep) -> Option<&str> {
    match keep {
        Keep::Start => {
            let mut end = limit.min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            // The first char after the window must be whitespace, or the window ends in one.
            let head = &text[..end];
            let cut = head
                .char_indices()
                .rev()
                .find(|(_, c)| c.is_whitespace())
                .map(|(i, _)| i)?;
            (cut > 0).then(|| &text[..cut])
        }
        Keep::End => {
            let mut start = text.len().saturating_sub(limit);
            while !text.is_char_boundary(start) {
                start += 1;
            }
            let tail = &text[start..];
            let (i, c) = tail.char_indices().find(|(_, c)| c.is_whitespace())?;
            let cut = start + i + c.len_utf8();
            (cut < text.len()).then(|| &text[cut..])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_one_window() {
        assert_eq!(windows("a few words", 8, Keep::Start), vec!["a few words"]);
    }

    #[test]
    fn windows_grow_and_cut_at_whitespace() {
        let text = "word ".repeat(10_000);
        let all = windows(&text, 4, Keep::Start);
        assert_eq!(*all.last().expect("whole"), text.as_str());
        assert!(all[0].len() <= 4 * FIRST_WINDOW_BYTES_PER_TOKEN);
        for pair in all.windows(2) {
            assert!(pair[0].len() < pair[1].len());
        }
        for window in &all[..all.len() - 1] {
            assert!(text.starts_with(window));
            assert!(text[window.len()..].starts_with(' '));
        }
        for window in windows(&text, 4, Keep::End).iter().rev().skip(1) {
            assert!(text.ends_with(window));
            let before = &text[..text.len() - window.len()];
            assert!(before.ends_with(' '));
        }
    }

    #[test]
    fn no_whitespace_means_no_cut() {
        let text = "x".repeat(100_000);
        assert_eq!(windows(&text, 4, Keep::Start), vec![text.as_str()]);
        assert_eq!(windows(&text, 4, Keep::End), vec![text.as_str()]);
    }

    #[test]
    fn multibyte_boundaries() {
        let text = "é\u{3000}".repeat(50_000);
        for keep in [Keep::Start, Keep::End] {
            for window in windows(&text, 3, keep) {
                assert!(text.contains(window));
            }
        }
    }
}

//! Bounded quoting of client input in error messages.
//!
//! An error that echoes what a client sent must not grow with it: a name of a
//! million control characters, escaped in full, would make an error frame five
//! times larger than the input and larger than the frame limit the client accepts.
//! Every message the framework builds from input goes through [`quote`], and every
//! error and goodbye message, whoever wrote it, is cut by [`bound_message`] before
//! it is sent.

use std::fmt;

/// The characters of client input an error message quotes; the rest is replaced by
/// `…(N bytes)`.
pub const QUOTE_CHARS: usize = 32;

/// The longest message, in bytes, of an error or goodbye frame (and of the gRPC
/// status that ends a stream). Longer messages are cut at a character boundary and
/// end with `…(N bytes)`, N being the original length. Error and control frames stay
/// far below any frame limit a hub can advertise.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 512;

/// Client input as an error message quotes it: between double quotes, escaped like
/// `{:?}` (control characters as `\u{1}`), at most [`QUOTE_CHARS`] characters, and
/// `…(N bytes)` after the quote when the input was longer.
///
/// ```
/// use hub_core::quote::quote;
/// assert_eq!(quote("lobby").to_string(), r#""lobby""#);
/// let long = "\u{1}".repeat(1_000_000);
/// let q = quote(&long).to_string();
/// assert!(q.len() < 250, "{}", q.len());
/// assert!(q.ends_with("…(1000000 bytes)"));
/// ```
pub fn quote(input: &str) -> Quoted<'_> {
    Quoted(input)
}

/// See [`quote`].
#[derive(Clone, Copy)]
pub struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        let mut chars = self.0.char_indices();
        for (_, c) in chars.by_ref().take(QUOTE_CHARS) {
            // `escape_debug` escapes `"` and `\` too, so the quote cannot be broken out of.
            write!(f, "{}", c.escape_debug())?;
        }
        f.write_str("\"")?;
        if chars.next().is_some() {
            write!(f, "…({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Cuts `message` to at most [`MAX_ERROR_MESSAGE_BYTES`] bytes (at a character
/// boundary, with `…(N bytes)` at the end); shorter messages are returned as they are.
///
/// ```
/// use hub_core::quote::{bound_message, MAX_ERROR_MESSAGE_BYTES};
/// assert_eq!(bound_message("short".into()), "short");
/// let cut = bound_message("é".repeat(10_000));
/// assert!(cut.len() <= MAX_ERROR_MESSAGE_BYTES);
/// assert!(cut.ends_with("…(20000 bytes)"));
/// ```
pub fn bound_message(message: String) -> String {
    if message.len() <= MAX_ERROR_MESSAGE_BYTES {
        return message;
    }
    let tail = format!("…({} bytes)", message.len());
    let mut cut = MAX_ERROR_MESSAGE_BYTES - tail.len();
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = message;
    out.truncate(cut);
    out.push_str(&tail);
    out
}

/// Like [`bound_message`], borrowing: returns `message` itself when it is short enough.
pub fn bound_str(message: &str) -> std::borrow::Cow<'_, str> {
    if message.len() <= MAX_ERROR_MESSAGE_BYTES {
        std::borrow::Cow::Borrowed(message)
    } else {
        std::borrow::Cow::Owned(bound_message(message.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_input_is_quoted_whole() {
        assert_eq!(quote("a\"b\\c\n").to_string(), r#""a\"b\\c\n""#);
        assert_eq!(
            quote(&"x".repeat(QUOTE_CHARS)).to_string().len(),
            QUOTE_CHARS + 2
        );
    }

    #[test]
    fn long_input_is_cut_and_its_length_said() {
        let q = quote(&"x".repeat(QUOTE_CHARS + 1)).to_string();
        assert_eq!(
            q,
            format!(
                "\"{}\"…({} bytes)",
                "x".repeat(QUOTE_CHARS),
                QUOTE_CHARS + 1
            )
        );
        // The worst case per character is `\u{10ffff}`-like escapes: still bounded.
        let worst = quote(&"\u{1}".repeat(10 << 20)).to_string();
        assert!(worst.len() <= 2 + QUOTE_CHARS * 10 + 24, "{}", worst.len());
    }

    #[test]
    fn messages_are_bounded_at_a_char_boundary() {
        for s in [
            "a".repeat(100_000),
            "é".repeat(100_000),
            "🦀".repeat(100_000),
        ] {
            let b = bound_message(s.clone());
            assert!(b.len() <= MAX_ERROR_MESSAGE_BYTES, "{}", b.len());
            assert!(b.ends_with(&format!("…({} bytes)", s.len())));
        }
        let exact = "a".repeat(MAX_ERROR_MESSAGE_BYTES);
        assert_eq!(bound_message(exact.clone()), exact);
        assert_eq!(bound_str(&exact), exact.as_str());
    }
}

//! Splitting an ACL line or a condition into words: whitespace separated, with HAProxy's
//! quoting and escapes resolved, each word keeping its byte offset for diagnostics.

use crate::config::acl::AclError;

/// A word of an ACL line or condition, quotes and escapes resolved.
#[derive(Debug)]
pub(super) struct Token {
    pub(super) text: String,
    /// Byte offsets of the raw word in the input.
    pub(super) offset: usize,
    pub(super) end: usize,
    /// No quote or escape was involved: offsets inside `text` are offsets inside the input.
    pub(super) verbatim: bool,
}

pub(super) fn tokenize(input: &str) -> Result<Vec<Token>, AclError> {
    let mut tokens = Vec::new();
    let mut chars = input.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_ascii_whitespace()).is_some() {}
        let Some(&(offset, _)) = chars.peek() else {
            break;
        };
        let (mut text, mut verbatim, mut quote) = (String::new(), true, None);
        while let Some(&(at, c)) = chars.peek() {
            if quote.is_none() && c.is_ascii_whitespace() {
                break;
            }
            chars.next();
            match (quote, c) {
                (None, '\'' | '"') => {
                    quote = Some((c, at));
                    verbatim = false;
                }
                (Some((q, _)), _) if c == q => quote = None,
                (None | Some(('"', _)), '\\') => {
                    match chars.next_if(|(_, n)| " \\'\"#".contains(*n)) {
                        Some((_, escaped)) => {
                            text.push(escaped);
                            verbatim = false;
                        }
                        None => text.push('\\'),
                    }
                }
                _ => text.push(c),
            }
        }
        if let Some((q, at)) = quote {
            return Err(AclError::new(at, format!("unterminated quote {q}")));
        }
        let end = chars.peek().map_or(input.len(), |&(at, _)| at);
        tokens.push(Token {
            text,
            offset,
            end,
            verbatim,
        });
    }
    Ok(tokens)
}

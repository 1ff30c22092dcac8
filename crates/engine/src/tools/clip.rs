//! Clipping long tool outputs so one answer cannot flood the model's context.

/// Longest answer a tool gives the model, in characters (Trae's limit).
pub const MAX_RESPONSE_CHARS: usize = 16_000;

/// Appended to a clipped file view; the `<response clipped>` token is the one
/// the editing tool's description tells the model about.
pub(crate) const FILE_CLIPPED_NOTE: &str = "<response clipped><NOTE>Only the beginning of this output is shown to save context. \
Search inside the file with `grep -n` and view the lines you need with `view_range`.</NOTE>";

/// Keeps the first `max_chars` characters and marks the cut (file views: the
/// model can ask for a later range).
pub(crate) fn clip_head(text: String, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        None => text,
        Some((cut, _)) => format!("{}{FILE_CLIPPED_NOTE}", &text[..cut]),
    }
}

/// Keeps the beginning and the end of `text`, which together hold at most
/// `max_chars` characters, with a marker saying how much was left out
/// (command output: errors and summaries usually come last).
/// `omitted_before` counts what was already dropped while capturing.
pub(crate) fn clip_middle(text: &str, max_chars: usize, omitted_before: usize) -> String {
    let total = text.chars().count();
    if total <= max_chars && omitted_before == 0 {
        return text.to_string();
    }
    let keep = max_chars.min(total);
    let head_chars = keep / 2;
    let tail_chars = keep - head_chars;
    let head_end = byte_offset(text, head_chars);
    let tail_start = byte_offset(text, total - tail_chars);
    let omitted = total - keep + omitted_before;
    format!(
        "{}\n<response clipped: {omitted} characters of output omitted>\n{}",
        &text[..head_end],
        &text[tail_start..]
    )
}

fn byte_offset(text: &str, chars: usize) -> usize {
    text.char_indices()
        .nth(chars)
        .map_or(text.len(), |(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_untouched() {
        assert_eq!(clip_head("abc".into(), 3), "abc");
        assert_eq!(clip_middle("abc", 3, 0), "abc");
    }

    #[test]
    fn head_clip_marks_the_cut() {
        let out = clip_head("ééééé".into(), 2);
        assert!(out.starts_with("éé<response clipped>"));
    }

    #[test]
    fn middle_clip_keeps_both_ends() {
        let text: String = (0..100)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let out = clip_middle(&text, 10, 0);
        assert!(out.starts_with("abcde\n<response clipped: 90 characters of output omitted>\n"));
        assert!(out.ends_with(&text[95..]));
        let out = clip_middle("short", 100, 7);
        assert!(out.contains("7 characters"));
    }
}

//! Assertions on text (error messages, command output) that show the whole text when they fail.

/// Asserts that `text` contains `part`.
#[track_caller]
pub fn assert_contains(text: &str, part: &str) {
    assert!(text.contains(part), "expected {part:?} in:\n{text}");
}

/// Asserts that `text` does not contain `part`.
#[track_caller]
pub fn assert_lacks(text: &str, part: &str) {
    assert!(!text.contains(part), "expected no {part:?} in:\n{text}");
}

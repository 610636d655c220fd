//! The one progress-bar style of the command line: `label [=====>    ] 12/40 unit, 3s
//! elapsed, eta 9s  message`, on stderr.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps counted in `unit` ("prompts", "responses", …) and labelled `label`,
/// or a hidden bar when `label` is `None` (quiet runs): callers tick it either way.
pub fn bar(label: Option<&str>, unit: &str, len: u64) -> ProgressBar {
    let Some(label) = label else {
        return ProgressBar::hidden();
    };
    let template = format!(
        "{{prefix:>12}} [{{bar:30}}] {{pos}}/{{len}} {}, {{elapsed}} elapsed, eta {{eta}} {{msg}}",
        unit.replace(['{', '}'], "")
    );
    let style = ProgressStyle::with_template(&template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let bar = ProgressBar::new(len).with_style(style);
    bar.set_prefix(label.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_parses_for_any_unit() {
        // A unit with braces would break the template; they are dropped, not parsed.
        for unit in ["prompts", "responses", "{weird}"] {
            let b = bar(Some("eval"), unit, 3);
            assert_eq!(b.length(), Some(3));
            assert_eq!(b.prefix(), "eval");
        }
        assert!(bar(None, "prompts", 3).is_hidden());
    }
}

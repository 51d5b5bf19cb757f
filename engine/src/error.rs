//! Engine errors and their exit codes (design.md): 2 for bad usage, config or data; 1 for a failure
//! during the run; 130 for a run stopped by a signal (after its checkpoint).

/// An error that ends the process.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Bad usage, config or data: detected before anything is written. Exit code 2.
    #[error("{0}")]
    Usage(String),
    /// A failure while running. Exit code 1.
    #[error("{0}")]
    Run(String),
    /// Stopped by SIGTERM, SIGINT or SIGUSR1 after writing a checkpoint to resume from. Exit code 130.
    #[error("{0}")]
    Interrupted(String),
    /// An error whose message was already printed, ending the process with this exit code: every rank of a
    /// data-parallel run prints its own before any of them exits (see `cli::agree`).
    #[error("(reported above)")]
    Reported(i32),
}

impl EngineError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            EngineError::Usage(_) => 2,
            EngineError::Run(_) => 1,
            EngineError::Interrupted(_) => crate::signals::INTERRUPTED_EXIT_CODE,
            EngineError::Reported(code) => *code,
        }
    }
}

/// Shorthand for a usage error.
pub fn usage(msg: impl Into<String>) -> EngineError {
    EngineError::Usage(msg.into())
}

/// The closest candidate to `name` (case-insensitive; the better of Jaro-Winkler and normalised
/// Damerau-Levenshtein similarity, so both prefix typos and swapped letters are caught), if close enough.
pub fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = name.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| {
            let c_low = c.to_ascii_lowercase();
            let score =
                strsim::jaro_winkler(&lower, &c_low).max(strsim::normalized_damerau_levenshtein(&lower, &c_low));
            (score, c)
        })
        .filter(|(s, _)| *s > 0.6)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// "unknown X `name`" with a suggestion and the valid choices.
pub fn unknown_name(what: &str, key: &str, name: &str, valid: &[&str]) -> String {
    let hint = did_you_mean(name, valid.iter().copied()).map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default();
    format!("{key}: unknown {what} `{}`{hint}; registered: {}", shortened(name), valid.join(", "))
}

/// `text` as a message quotes it: whole up to 80 characters, else its first 80 and how many more (a value
/// pasted by mistake, megabytes long, would otherwise bury the message).
pub fn shortened(text: &str) -> String {
    const KEEP: usize = 80;
    match text.char_indices().nth(KEEP) {
        None => text.to_string(),
        Some((cut, _)) => format!("{}... ({} more characters)", &text[..cut], text[cut..].chars().count()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_quoted_shortened() {
        let long = "x".repeat(10_000_000);
        let m = unknown_name("task", "run.task", &long, &["classification"]);
        assert!(m.len() < 300 && m.contains("(9999920 more characters)"), "{}", &m[..300.min(m.len())]);
        assert_eq!(shortened("short"), "short");
        let accented = "é".repeat(81);
        assert_eq!(shortened(&accented), format!("{}... (1 more characters)", "é".repeat(80)));
    }

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(did_you_mean("adamx", ["sgd", "adamw"]), Some("adamw"));
        assert_eq!(did_you_mean("zzz", ["sgd", "adamw"]), None);
        let m = unknown_name("model", "model.arch", "mpl", &["mlp"]);
        assert!(m.contains("did you mean `mlp`") && m.contains("registered: mlp"), "{m}");
    }
}

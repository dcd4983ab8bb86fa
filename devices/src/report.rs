//! Logging of failures that can repeat on every guest access.

use std::cell::Cell;
use std::fmt::Display;

/// An error and its sources, on one line (`outer: cause: root cause`).
pub(crate) fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Logs the first failure of a recurring operation at warning level and only counts the
/// following ones, until the operation works again. A guest writing to a closed stdout, say,
/// cannot flood the log.
///
/// It uses `Cell`s so devices can report from `&self` methods; it lives inside a device, behind
/// the device's mutex.
#[derive(Debug)]
pub(crate) struct ErrorLog {
    what: &'static str,
    failing: Cell<bool>,
    repeats: Cell<u64>,
}

impl ErrorLog {
    /// `what` names the operation, e.g. "serial console output".
    pub(crate) const fn new(what: &'static str) -> Self {
        Self {
            what,
            failing: Cell::new(false),
            repeats: Cell::new(0),
        }
    }

    /// Records a failure; only the first of a run is logged.
    pub(crate) fn failed(&self, error: &dyn Display) {
        if self.failing.replace(true) {
            self.repeats.set(self.repeats.get().saturating_add(1));
        } else {
            log::warn!(
                "{} failed: {error} (further failures are not logged until it works again)",
                self.what
            );
        }
    }

    /// Records a success, logging the end of a run of failures.
    pub(crate) fn succeeded(&self) {
        if self.failing.replace(false) {
            log::info!(
                "{} works again ({} more failures were not logged)",
                self.what,
                self.repeats.replace(0)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_log;

    #[test]
    fn only_the_first_failure_of_a_run_is_logged() {
        let log = ErrorLog::new("thing");
        let records = test_log::capture(|| {
            log.succeeded();
            log.failed(&"broken");
            log.failed(&"broken");
            log.failed(&"broken");
            log.succeeded();
            log.succeeded();
            log.failed(&"again");
        });
        assert_eq!(
            records,
            [
                "WARN thing failed: broken (further failures are not logged until it works again)",
                "INFO thing works again (2 more failures were not logged)",
                "WARN thing failed: again (further failures are not logged until it works again)",
            ]
        );
    }
}

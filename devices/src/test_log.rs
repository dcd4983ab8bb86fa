//! Test-only capture of `log` records emitted on the current thread.

use std::cell::RefCell;
use std::sync::Once;

use log::{Log, Metadata, Record};

thread_local! {
    static CAPTURED: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

struct ThreadCapture;

impl Log for ThreadCapture {
    fn enabled(&self, _metadata: &Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &Record<'_>) {
        CAPTURED.with(|captured| {
            if let Some(records) = captured.borrow_mut().as_mut() {
                records.push(format!("{} {}", record.level(), record.args()));
            }
        });
    }

    fn flush(&self) {}
}

static LOGGER: ThreadCapture = ThreadCapture;
static INSTALL: Once = Once::new();

/// Runs `f` and returns the records it logged on this thread, as "LEVEL message".
pub(crate) fn capture(f: impl FnOnce()) -> Vec<String> {
    INSTALL.call_once(|| {
        // Only this module installs a logger in the test binary.
        let _ = log::set_logger(&LOGGER);
        log::set_max_level(log::LevelFilter::Trace);
    });
    CAPTURED.with(|captured| *captured.borrow_mut() = Some(Vec::new()));
    f();
    CAPTURED.with(|captured| captured.borrow_mut().take().unwrap_or_default())
}

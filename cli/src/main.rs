//! `petrel`: boot a Linux guest on KVM with one command.
//!
//! Exit status (see README.md): 0 the guest reset or powered off; 1 petrel failed; 2 bad
//! command line or configuration; 3 a vCPU failed or the guest crashed; 128+N stopped by
//! signal N (SIGINT → 130, SIGTERM → 143).

mod args;
mod logger;
mod terminal;

use std::error::Error;

use clap::Parser;
use petrel_core::lifecycle::{EXIT_BAD_CONFIG, EXIT_GUEST_STOPPED, EXIT_VMM_ERROR};
use petrel_core::signals::{install_metrics_signal_handler, install_stop_signal_handlers};
use petrel_core::{build_vm, StopReason};

use crate::args::{Cli, Command, RunArgs};
use crate::terminal::{restore_terminal, RawTerminal};

fn main() {
    petrel_core::mark_process_start();
    let code = match Cli::try_parse() {
        Ok(cli) => {
            let boot_timer = matches!(&cli.command, Command::Run(args) if args.boot_timer);
            logger::init(cli.log_level.into(), boot_timer);
            match cli.command {
                Command::Run(args) => run(&args),
            }
        }
        Err(e) => usage_error(e),
    };
    std::process::exit(code);
}

/// Prints clap's help or version as usual, and any parse error as one line.
fn usage_error(error: clap::Error) -> i32 {
    use clap::error::ErrorKind;
    match error.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = error.print();
            if error.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                EXIT_BAD_CONFIG
            } else {
                EXIT_GUEST_STOPPED
            }
        }
        _ => {
            // clap's message may continue on indented lines before its usage block; fold
            // them into one line.
            let rendered = error.render().to_string();
            let message = rendered
                .lines()
                .take_while(|line| !line.trim().is_empty() && !line.starts_with("Usage:"))
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" ");
            let message = message.strip_prefix("error: ").unwrap_or(&message);
            eprintln!("petrel: error: {message} (see petrel --help)");
            EXIT_BAD_CONFIG
        }
    }
}

/// `petrel run`: build the VM, run it, and turn how it ended into an exit status.
fn run(args: &RunArgs) -> i32 {
    let config = args.to_config();
    if let Err(e) = install_stop_signal_handlers() {
        return report_error(&e, EXIT_VMM_ERROR);
    }
    if config.metrics.is_some() {
        if let Err(e) = install_metrics_signal_handler() {
            return report_error(&e, EXIT_VMM_ERROR);
        }
    }
    std::panic::set_hook(Box::new(|info| {
        restore_terminal();
        eprintln!("petrel: internal error: {info}");
    }));

    let vmm = match build_vm(&config) {
        Ok(vmm) => vmm,
        Err(e) => {
            let code = if e.is_config_error() {
                EXIT_BAD_CONFIG
            } else {
                EXIT_VMM_ERROR
            };
            return report_error(&e, code);
        }
    };

    let _raw_terminal = if config.console.takes_stdin() {
        match RawTerminal::enable(libc::STDIN_FILENO) {
            Ok(guard) => guard,
            Err(e) => {
                log::warn!("cannot put the terminal in raw mode: {e}");
                None
            }
        }
    } else {
        None
    };

    match vmm.run() {
        Ok(report) => {
            if let Some(table) = &report.exit_stats_table {
                eprint!("{table}");
            }
            report_stop(&report.reason)
        }
        Err(e) => report_error(&e, EXIT_VMM_ERROR),
    }
}

/// Logs how the VM stopped and returns the exit status for it.
fn report_stop(reason: &StopReason) -> i32 {
    match reason {
        StopReason::GuestReset(petrel_core::lifecycle::ResetSource::TripleFault) => {
            log::warn!("{reason}")
        }
        _ if reason.is_failure() => {
            restore_terminal();
            eprintln!("petrel: error: {reason}");
        }
        _ => log::info!("{reason}"),
    }
    reason.exit_code()
}

/// Prints an error and its causes as one line on stderr.
fn report_error(error: &dyn Error, code: i32) -> i32 {
    restore_terminal();
    let mut line = format!("petrel: error: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    eprintln!("{line}");
    code
}

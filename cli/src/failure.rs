//! Why a command failed, and the exit status that says so: 2 for usage errors and
//! bad input (the caller can fix the command), 1 for failures of the machine (no
//! adapter, a lost device, a failed read-back, an I/O error while writing).

use std::io::Write;
use std::process::ExitCode;

/// A failed command: one `error:` line on stderr and its exit status.
#[derive(Debug)]
pub enum Failure {
    /// Bad arguments or input: exit status 2.
    Usage(String),
    /// The machine failed (GPU, device, file system): exit status 1.
    Machine(String),
}

impl Failure {
    /// Prints the `error:` line and returns the exit status.
    pub fn report(&self) -> ExitCode {
        let (message, status) = match self {
            Failure::Usage(message) => (message, 2),
            Failure::Machine(message) => (message, 1),
        };
        // A stderr that cannot be written (closed, a full device) must not turn
        // the exit status into a panic's.
        let _ = writeln!(std::io::stderr(), "error: {message}");
        ExitCode::from(status)
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure::Usage(message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Self {
        Failure::Usage(message.to_owned())
    }
}

impl From<xent::Error> for Failure {
    fn from(error: xent::Error) -> Self {
        match error {
            xent::Error::NoAdapter(_)
            | xent::Error::RequestDevice(_)
            | xent::Error::Gpu(_)
            | xent::Error::Readback(_) => Failure::Machine(error.to_string()),
            _ => Failure::Usage(error.to_string()),
        }
    }
}

/// The result of a command.
pub type Outcome = Result<(), Failure>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_failures_exit_1_and_bad_input_exits_2() {
        let machine = Failure::from(xent::Error::NoAdapter("none".into()));
        assert!(matches!(machine, Failure::Machine(_)));
        let usage = Failure::from(xent::Error::InvalidOption("label_smoothing".into()));
        assert!(matches!(usage, Failure::Usage(_)));
        assert_eq!(Failure::from("bad".to_owned()).report(), ExitCode::from(2));
        assert_eq!(machine.report(), ExitCode::from(1));
    }
}

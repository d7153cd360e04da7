//! The shape every subcommand's argument handling shares: `--help` prints the usage to stdout
//! and exits 0; a bad argument prints what is wrong and the usage to stderr and exits 2.

/// The outcome of a subcommand's own parser, turned into the arguments to run with, or the
/// exit code after usage or the error was printed. `name` is how the error names the command.
pub fn parsed<T>(name: &str, usage: &str, outcome: Result<Option<T>, String>) -> Result<T, i32> {
    match outcome {
        Ok(Some(args)) => Ok(args),
        Ok(None) => {
            println!("{usage}");
            Err(0)
        }
        Err(e) => {
            eprintln!("{name}: {e}\n\n{usage}");
            Err(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_is_exit_0_and_an_error_exit_2() {
        assert_eq!(parsed("x", "usage", Ok(Some(5))), Ok(5));
        assert_eq!(parsed::<u8>("x", "usage", Ok(None)), Err(0));
        assert_eq!(parsed::<u8>("x", "usage", Err("bad".into())), Err(2));
    }
}

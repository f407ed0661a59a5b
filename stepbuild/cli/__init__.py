"""The command line: argument parsing, exit codes, the one place errors are printed."""

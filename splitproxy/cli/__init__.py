"""The command line: run, check, status, actions, demo."""

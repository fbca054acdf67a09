"""Developer tools that sit outside the installed packages (run as ``python -m tools.<name>``)."""

"""osteo: command line and configuration loading for osteo-platform."""

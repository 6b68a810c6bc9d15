"""Command-line entry point that ties the engine and the monitor together."""

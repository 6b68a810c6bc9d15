"""The headless research loop. Nothing in this package imports Textual or the monitor."""

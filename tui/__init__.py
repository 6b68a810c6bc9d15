"""The Textual monitor: a client of the run directory and the control socket."""

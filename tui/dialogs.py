"""Small modal screens: confirm a command, write a note, quit, help."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Static

DIALOG_CSS = """
{cls} {{ align: center middle; }}
{cls} > Vertical {{
    width: 64; max-width: 100%; height: auto; max-height: 100%;
    border: thick $primary; background: $surface; padding: 0 1;
}}
{cls} .question {{ margin: 1 0; }}
{cls} Horizontal {{ height: auto; align-horizontal: right; }}
{cls} Button {{ margin-left: 1; min-width: 10; }}
{cls} .keys {{ color: $text-muted; text-align: right; }}
"""

# Arrow keys move between a dialog's buttons, as people expect of a row of buttons.
ARROWS = [
    Binding("left", "app.focus_previous", "Previous", show=False),
    Binding("right", "app.focus_next", "Next", show=False),
]


class ConfirmModal(ModalScreen[bool]):
    """Yes/no for a command that cannot be undone. Enter or y confirms; Esc or n cancels."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes", show=True),
        Binding("n,escape", "answer(False)", "No", show=True),
        *ARROWS,
    ]
    DEFAULT_CSS = DIALOG_CSS.format(cls="ConfirmModal")

    def __init__(self, title: str, question: str, yes_label: str):
        super().__init__()
        self.title_text = title
        self.question = question
        self.yes_label = yes_label

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = self.title_text
            yield Static(Text(self.question), classes="question")
            with Horizontal():
                yield Button(self.yes_label, id="yes", variant="warning")
                yield Button("Cancel", id="no")
            yield Static("y or Enter confirms · n or Esc cancels", classes="keys")

    def on_mount(self) -> None:
        self.query_one("#yes", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


class NoteModal(ModalScreen[str | None]):
    """One line of text for the agent's next proposal."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = DIALOG_CSS.format(cls="NoteModal")

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = "Note for the agent"
            yield Static(Text("The agent reads this in its next proposal. Enter sends, Esc cancels."), classes="question")
            yield Input(placeholder="e.g. try a smaller learning rate warmup", id="note")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        text = event.value.strip()
        self.dismiss(text or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class QuitModal(ModalScreen[str | None]):
    """Leave the loop running (default), stop it, or stay."""

    BINDINGS = [
        Binding("l", "choose('leave')", "Leave running"),
        Binding("s", "choose('stop')", "Stop the loop"),
        Binding("escape,c", "choose(None)", "Cancel"),
        *ARROWS,
    ]
    DEFAULT_CSS = DIALOG_CSS.format(cls="QuitModal")

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = "Quit the monitor"
            yield Static(
                Text("The research loop runs on its own. Leave it running and close the monitor, or stop the loop too?"),
                classes="question",
            )
            with Horizontal():
                yield Button("Leave it running", id="leave", variant="primary")
                yield Button("Stop the loop", id="stop", variant="error")
                yield Button("Cancel", id="cancel")
            yield Static("l leave running · s stop the loop · Esc cancel · ←/→ Enter", classes="keys")

    def on_mount(self) -> None:
        self.query_one("#leave", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(None if event.button.id == "cancel" else event.button.id)

    def action_choose(self, choice: str | None) -> None:
        self.dismiss(choice)


# At 80x24 the box leaves 74 columns (border, padding, scrollbar): lines fit in that.
HELP_TEXT = """\
Live screen
  p        pause after this experiment / resume
  s        skip: stop this run now and record it as skipped (asks first)
  k        force-keep this run if it ends with a metric (asks first)
  n        leave a note the agent reads in its next proposal
  h        history of every experiment
  d        the pending change full screen
  l        focus the training log (End follows the tail again)
  r        restart the engine (when it has stopped or died)
  tab      move between panes; at 80x24, 1-4 switch tabs
  ctrl+p   command palette: every action, plus themes
  q        quit: leave the loop running (default) or stop it
{several}
History
  enter    open the experiment: hypothesis, diff, log, metrics, eval.json
  o        sort by the next column (clicking a header does too)
  i        invert the sort order
  f        filter by status
  /        search descriptions, hypotheses and commits
  escape   back
  marks    H: a keep that improved the metric but raised the holdout
           T: a keep whose tokens/s moved over 20% from the best's
           S: self-reported: the run printed its metric, nothing trusted
           R: a re-measure that caught the best reading ahead and revoked
              it (X on the keeps it revoked: they no longer count)

Every command shows the engine's answer: accepted, or refused and why.

AUTORESEARCH_BELL=1 rings the terminal bell, =osc9 sends a desktop
notification (OSC 9), on a new best, a hang or timeout, a pause on an
error, or the engine gone. Off by default.
"""

# Only with several workers (a row per running experiment above the panes).
SEVERAL_TEXT = """
Several workers: a row per running experiment, above the panes
  ] / [    select the next / previous one (or click its row); the
           experiment, log and diff panes follow it, s and k act on it
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "app.pop_screen", "Close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 84; max-width: 100%; height: auto; max-height: 100%;
        border: thick $primary; background: $surface; padding: 0 1;
    }
    HelpScreen #help-note { margin-bottom: 1; color: $error; }
    """

    def __init__(self, note: str | None = None, several: bool = False):
        super().__init__()
        self.note = note  # something the user must know about this run (no sandbox), shown first
        self.several = several  # several workers: the keys of the list of running experiments

    def compose(self) -> ComposeResult:
        with VerticalScroll() as box:
            box.border_title = "Keys"
            box.border_subtitle = "Esc closes"
            if self.note:
                yield Static(Text(self.note, style="bold"), id="help-note")
            yield Static(Text(HELP_TEXT.format(several=SEVERAL_TEXT if self.several else "")))

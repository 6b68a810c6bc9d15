"""The footer: the keys that apply right now, as one line of text.

Textual's Footer builds a widget per key and rebuilds them all whenever bindings may
have changed (several times during start-up alone). This bar is one Static: it redraws
only when the line it would show differs (its text, or which of its keys are enabled: a
key that turns available or unavailable keeps its words and changes its style), which is
cheap and kind to slow SSH links.
Clicking a key runs its action, as with Textual's footer.
"""

from __future__ import annotations

from textual import events
from textual.content import Content
from textual.widgets import Static


class KeyBar(Static):
    DEFAULT_CSS = """
    KeyBar { dock: bottom; height: 1; background: $panel; color: $foreground; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def on_mount(self) -> None:
        self._spans: list[tuple[int, int, str, object]] = []  # (start, end, action, namespace)
        self._shown: tuple[str, tuple[bool, ...]] | None = None  # the text, and which keys are enabled
        self.screen.bindings_updated_signal.subscribe(self, lambda _screen: self.refresh_keys())
        self.call_after_refresh(self.refresh_keys)

    def on_unmount(self) -> None:
        self.screen.bindings_updated_signal.unsubscribe(self)

    def refresh_keys(self) -> None:
        if not self.is_attached:
            return
        parts: list[str | tuple[str, str]] = [" "]
        spans: list[tuple[int, int, str, object]] = []
        seen: set[str] = set()
        enabled: list[bool] = []
        pos = 1
        for _key, active in self.screen.active_bindings.items():
            binding = active.binding
            if not binding.show or binding.action in seen:
                continue
            seen.add(binding.action)
            enabled.append(active.enabled)
            key = self.app.get_key_display(binding)
            key_style = "bold $accent" if active.enabled else "dim"
            desc = f" {binding.description}"
            parts += [(key, key_style), (desc, "" if active.enabled else "dim"), "  "]
            spans.append((pos, pos + len(key) + len(desc), binding.action, active.node))
            pos += len(key) + len(desc) + 2
        if self.app.ENABLE_COMMAND_PALETTE:
            parts += [("^p", "bold $accent"), (" palette", "dim")]
            spans.append((pos, pos + 10, "app.command_palette", self.app))
        content = Content.assemble(*parts)
        shown = (content.plain, tuple(enabled))
        if shown == self._shown:
            return
        self._shown = shown
        self._spans = spans
        self.update(content)

    async def on_click(self, event: events.Click) -> None:
        for start, end, action, node in self._spans:
            if start <= event.x < end:
                await self.app.run_action(action, node)  # type: ignore[arg-type]
                return

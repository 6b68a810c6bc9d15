"""Pipelined proposals: the agent writes experiment N+1 while experiment N trains.

The next proposal is written in a second worktree (``.autoresearch/<tag>/next``) at the
best commit of the moment, with N's description, hypothesis and diff in its prompt. When
N has been decided, the proposal is carried to the run's worktree as a patch:

- N discarded (or failed): the best did not move, the patch applies as it is;
- N kept: the patch is applied on the new best with git's three-way merge; when it
  applies cleanly the experiment runs and its record says it was rebased, otherwise the
  proposal is dropped (an event, not an experiment) and the agent proposes again.

A proposal that never ran is not a result and takes no number: a kill while one is
pending loses it and nothing else (the next worktree is reset at start).
"""

from __future__ import annotations

from . import gitops
from .gitops import GitMetadata
from .propose import Asked, Asking
from .results import Result
from .session import Session


class NextProposal:
    """The proposal being written for the next change experiment."""

    def __init__(self, s: Session, draft: Result, in_flight: Result, in_flight_diff: str):
        repo = gitops.open_repo(s.repo_path)
        self.base = s.best_commit()
        self.wt = gitops.Worktree.open_or_create_detached(repo, s.rd.next_worktree, s.tag, self.base)
        self.metadata = GitMetadata(self.wt.repo)
        self.draft = draft
        self.asking = Asking(s, draft, self.wt, self.base, in_flight=in_flight, in_flight_diff=in_flight_diff)
        s.journal.update_state(next_proposal={"n": draft.n, "state": "thinking"})

    def cancel(self, s: Session) -> None:
        self.asking.cancel()
        self.wt.reset_to(self.base)
        s.journal.update_state(next_proposal=None)

    def take(self, s: Session) -> tuple[Asked, GitMetadata, list[str]]:
        """Wait for the proposal, then carry it to the run's worktree at the current best.

        Returns ("ok", …) with the change applied (``draft.rebased`` when the best moved
        under it), ("dropped", …) when it no longer applies, or what ``Asking.wait`` says;
        then the git metadata snapshot and problems the patch cannot carry (ignored files).
        """
        n = self.draft.n
        s.journal.update_state(next_proposal={"n": n, "state": "ready" if self.asking.done else "thinking"})
        asked = self.asking.wait()
        if asked.outcome != "ok":
            s.journal.update_state(next_proposal=None)
            return asked, self.metadata, []
        change = self.wt.change(binary=True)
        ignored = self.wt.ignored_paths()
        best = s.best_commit()
        s.wt.reset_to(best)
        applied = s.wt.apply(change.diff, three_way=best != self.base)
        self.wt.reset_to(self.base)
        if not applied:
            s.journal.event("proposal_dropped", n=n, description=self.draft.description,
                            reason="the change no longer applies on the new best")
            s.journal.update_state(next_proposal={"n": n, "state": "dropped"})
            s.say(f"#{n:04d} proposal dropped: it no longer applies on the new best; asking again")
            return Asked("dropped"), self.metadata, []
        self.draft.rebased = best != self.base
        problems = [f"added files that git ignores (they would not be part of the commit): {', '.join(ignored[:10])}"
                    ] if ignored else []
        s.journal.update_state(next_proposal={"n": n, "state": "rebased" if self.draft.rebased else "ready"})
        return asked, self.metadata, problems

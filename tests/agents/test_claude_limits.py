"""The Claude agent's bounds: tool sizes, quoting, call counts, history, request size,
the cost cap inside a proposal, cancellation and clean streamed text. The real SDK
talks to the scripted fake API, as in test_claude.py."""

from __future__ import annotations

import json
import threading

import pytest

from engine.agents import claude
from engine.agents.base import AgentError, CostCapReached, ProposalCancelled
from engine.agents.claude import (
    MAX_CALLS_PER_PROPOSAL,
    MAX_CALLS_PER_RESPONSE,
    MAX_FILE_BYTES,
    TRIMMED_EDIT,
    TRIMMED_READ,
    ClaudeAgent,
)
from engine.config import AgentConfig

from .conftest import TRAIN_PY
from .fake_messages_api import error, message, text, thinking, tool, tool_results

EDIT = tool("replace", path="train.py", old="LR = 0.01", new="LR = 0.005")
SUBMIT = tool("submit", hypothesis="A smaller learning rate is more stable.", description="LR 0.01 -> 0.005")
PRICES = {"claude-test-model": [3.0, 15.0, 3.75, 0.30]}  # input, output, cache write, cache read


def agent(**config) -> ClaudeAgent:
    config.setdefault("max_retries", 2)
    config.setdefault("request_timeout", 10.0)
    return ClaudeAgent(AgentConfig(**config), backoff_base=0.001, backoff_max=0.005)


def priced_agent(**config) -> ClaudeAgent:
    return agent(model="claude-test-model", prices=PRICES, **config)


def emitted(ctx) -> str:
    return "".join(ctx.emitted)


def assistant_turns(body):
    return [m for m in body["messages"] if m["role"] == "assistant"]


def user_turns(body):
    return [m for m in body["messages"] if m["role"] == "user"]


# --- file sizes and quoting --------------------------------------------------------


def test_edits_that_would_make_a_file_too_large_are_refused(api, make_context, worktree):
    big = "# pad\n" * (MAX_FILE_BYTES // 6 + 10)  # just over the limit
    half = "x" * (MAX_FILE_BYTES // 2 + 10)
    api.add(
        message(tool("write_file", path="train.py", content=TRAIN_PY + big)),
        message(tool("replace", path="train.py", old="WARMUP = 10", new="WARMUP = 10\n" + big)),
        message(tool("replace", path="train.py", old="WARMUP = 10", new=f"WARMUP = 10\nA = '{half}'")),  # fits
        message(tool("replace", path="train.py", old="WARMUP = 10", new=f"WARMUP = 10\nB = '{half}'")),  # not any more
        message(EDIT),
        message(SUBMIT),
    )
    agent().propose(make_context())
    results = [tool_results(body)[0] for body in api.requests[1:5]]
    for r in (results[0], results[1], results[3]):
        assert r["is_error"] is True and "256 KiB" in r["content"], r["content"][:300]
        assert len(r["content"]) < 400
    assert not results[2].get("is_error")
    size = len((worktree / "train.py").read_bytes())
    assert size <= MAX_FILE_BYTES
    assert "A = 'x" in (worktree / "train.py").read_text() and "B = 'x" not in (worktree / "train.py").read_text()


def test_a_file_that_starts_larger_than_the_limit_may_still_be_edited(api, make_context, worktree):
    large = TRAIN_PY + "# pad\n" * (MAX_FILE_BYTES // 6 + 100)
    (worktree / "train.py").write_text(large)
    grow = "# more\n" * (MAX_FILE_BYTES // 4 // 7 + 10)  # a little over 64 KiB
    api.add(message(EDIT), message(tool("replace", path="train.py", old="WARMUP = 10", new="WARMUP = 10\n" + grow)), message(SUBMIT))
    agent().propose(make_context())
    assert not tool_results(api.requests[1])[0].get("is_error")  # a small change: fine
    assert "KiB limit" in tool_results(api.requests[2])[0]["content"]  # growing it by 64 KiB: refused


def test_refusals_and_events_quote_at_most_a_few_hundred_characters(api, make_context, worktree):
    long_path = "p" * 400_000
    nul_path = "\x00" + "q" * 2000
    missing = "m" * 500  # a name that is not mutable but short enough to resolve
    huge_old = "o" * 300_000
    api.add(
        message(tool("write_file", path=long_path, content="x")),
        message(tool("read_file", path=nul_path)),
        message(tool("write_file", path=missing, content="x")),
        message(tool("replace", path="train.py", old=huge_old, new="y")),
        message(tool("z" * 5000, path="train.py")),
        message(EDIT),
        message(SUBMIT),
    )
    ctx = make_context()
    agent().propose(ctx)
    results = [tool_results(body)[0] for body in api.requests[1:6]]
    assert all(r["is_error"] is True for r in results)
    for r in results:
        assert len(r["content"]) < 500, r["content"][:200]
    assert "400000 characters long" in results[0]["content"]
    assert "not a mutable file" in results[2]["content"] and "(500 characters)" in results[2]["content"]
    assert "unknown tool" in results[4]["content"]
    # Every event line stays short, whatever the arguments held.
    assert len(emitted(ctx)) < 5000
    assert "\x00" not in emitted(ctx)


def test_a_response_longer_than_max_tokens_allows_is_refused_mid_stream(api, make_context, worktree):
    api.add(message(tool("write_file", path="train.py", content="y" * 2_000_000)))
    with pytest.raises(AgentError) as info:
        agent(max_tokens=1000).propose(make_context())
    assert "refused the API response" in str(info.value) and not info.value.transient
    assert len(api.requests) == 1  # not retried
    assert (worktree / "train.py").read_text() == TRAIN_PY


# --- tool calls per response and per proposal ----------------------------------------


def test_tool_calls_beyond_the_per_response_cap_are_refused_and_dropped(api, make_context):
    many = [tool("read_history", limit=1) for _ in range(200)]
    api.add(message(*many), message(EDIT, SUBMIT))
    ctx = make_context()
    agent().propose(ctx)
    second = api.requests[1]
    # Only the calls that ran are re-sent, each answered; the model is told about the rest.
    assert sum(b["type"] == "tool_use" for b in assistant_turns(second)[-1]["content"]) == MAX_CALLS_PER_RESPONSE
    last = second["messages"][-1]["content"]
    assert len(tool_results(second)) == MAX_CALLS_PER_RESPONSE
    note = last[-1]
    assert note["type"] == "text" and "only the first 20 ran" in note["text"] and "other 180" in note["text"]
    assert "refused 180 tool calls" in emitted(ctx)


def test_after_the_per_proposal_cap_only_submit_runs(api, make_context, worktree):
    api.add(message(EDIT))
    per_turn = MAX_CALLS_PER_RESPONSE
    turns = MAX_CALLS_PER_PROPOSAL // per_turn
    for _ in range(turns):
        api.add(message(*[tool("read_history", limit=1)] * per_turn))
    api.add(message(tool("read_file", path="train.py"), SUBMIT))
    proposal = agent(max_turns=turns + 2).propose(make_context())
    assert proposal.description == "LR 0.01 -> 0.005"
    ran = [r for body in api.requests[1:] for r in tool_results(body)]
    refused = [r for r in ran if r.get("is_error")]
    assert len(ran) - len(refused) == MAX_CALLS_PER_PROPOSAL
    assert refused and all("call submit now" in r["content"] for r in refused)


# --- the history re-sent and the request size -------------------------------------------


def test_old_edits_and_reads_are_trimmed_from_the_history(api, make_context, worktree):
    bigger = TRAIN_PY + "# notes\n" * 400
    (worktree / "train.py").write_text(bigger)
    api.add(
        message(tool("read_file", path="train.py")),  # turn 1
        message(tool("write_file", path="train.py", content=bigger.replace("LR = 0.01", "LR = 0.02"))),  # turn 2
        message(tool("read_history", limit=5)),  # turn 3
        message(tool("replace", path="train.py", old="LR = 0.02", new="LR = 0.005")),  # turn 4
        message(SUBMIT),  # turn 5
    )
    agent().propose(make_context())
    third, fourth, fifth = api.requests[2], api.requests[3], api.requests[4]
    # Request 3 re-sends turns 1 and 2 whole.
    assert tool_results({"messages": [user_turns(third)[1]]})[0]["content"] == bigger
    # Request 4: turn 1 is two turns old, its read is a placeholder; turn 2's write is whole.
    assert tool_results({"messages": [user_turns(fourth)[1]]})[0]["content"] == TRIMMED_READ
    assert assistant_turns(fourth)[1]["content"][-1]["input"]["content"].startswith('"""A stand-in')
    # Request 5: turn 2's write is a placeholder that still names the file.
    trimmed = assistant_turns(fifth)[1]["content"][-1]["input"]
    assert trimmed == {"path": "train.py", "note": TRIMMED_EDIT}
    # The short replace of turn 4 and the first prompt are never trimmed.
    assert "LR = 0.01" in fifth["messages"][0]["content"][0]["text"]


def test_requests_stay_bounded_over_many_large_edits(api, make_context, worktree):
    turns = 8
    for i in range(turns):
        content = TRAIN_PY + f"# revision {i}\n" + "# pad\n" * 30_000  # about 180 KB
        api.add(message(tool("write_file", path="train.py", content=content)))
    api.add(message(SUBMIT))
    a = agent(max_turns=turns + 1, max_tokens=64_000)
    a.propose(make_context())
    # Without trimming the last request would re-send all eight files (1.4 MB).
    assert len(a.request_bytes) == turns + 1
    assert max(a.request_bytes) < 3 * 200_000
    assert max(len(json.dumps(b)) for b in api.requests) < 3 * 200_000


def test_a_request_over_the_size_limit_trims_harder_then_fails(api, make_context, worktree, monkeypatch):
    monkeypatch.setattr(claude, "MAX_REQUEST_BYTES", 300_000)
    (worktree / "train.py").write_text(TRAIN_PY + "# pad\n" * 16_000)  # about 110 KB as JSON
    read = tool("read_file", path="train.py")
    api.add(message(read), message(read), message(read, read, read))
    a = agent()
    with pytest.raises(AgentError) as info:
        a.propose(make_context())
    assert "over the 300000 bytes a request may have" in str(info.value)
    assert len(api.requests) == 3  # the fourth request was never sent
    # Request 3 fitted only by trimming the read of turn 1, though it was one turn old.
    assert tool_results({"messages": [user_turns(api.requests[2])[1]]})[0]["content"] == TRIMMED_READ
    assert all(size <= 300_000 for size in a.request_bytes)


# --- the cost cap inside a proposal -------------------------------------------------------


def test_a_request_that_could_pass_the_budget_is_not_sent(api, make_context, worktree):
    # $0.03 spent by the first response; the second request could cost more than the $0.02 left.
    api.add(message(EDIT, usage={"input_tokens": 10_000, "output_tokens": 0}), message(SUBMIT))
    ctx = make_context(budget_usd=0.05)
    with pytest.raises(CostCapReached) as info:
        priced_agent(max_tokens=1000).propose(ctx)
    e = info.value
    assert isinstance(e, AgentError) and not e.transient
    assert "cost cap" in str(e) and "request 2" in str(e)
    assert e.usage.input_tokens == 10_000 and e.usage.cost_usd == pytest.approx(0.03)
    assert len(api.requests) == 1
    assert "[cost cap:" in emitted(ctx)


def test_no_request_is_sent_when_even_the_first_could_pass_the_budget(api, make_context):
    # max_tokens alone: 8000 output tokens at $15/M = $0.12.
    with pytest.raises(CostCapReached) as info:
        priced_agent().propose(make_context(budget_usd=0.10))
    assert "request 1" in str(info.value) and "8000 output tokens" in str(info.value)
    assert api.requests == [] and info.value.usage.cost_usd == 0


def test_spending_stays_under_the_budget_over_many_requests(api, make_context):
    # The model reads forever; each response costs $0.009 (3000 input tokens).
    api.responder = lambda body: message(tool("read_file", path="train.py"), usage={"input_tokens": 3000, "output_tokens": 0})
    budget = 0.10
    with pytest.raises(CostCapReached) as info:
        priced_agent(max_tokens=200, max_turns=50).propose(make_context(budget_usd=budget))
    assert len(api.requests) > 3  # it went on while there was money
    assert info.value.usage.cost_usd <= budget
    assert info.value.usage.input_tokens == 3000 * len(api.requests)


def test_a_response_that_spends_the_budget_ends_the_proposal_unless_it_submits(api, make_context, worktree):
    # The projection (a small request, 100 output tokens) fits; the reply then bills far more.
    api.add(message(EDIT, usage={"input_tokens": 100_000, "output_tokens": 0}))
    with pytest.raises(CostCapReached) as info:
        priced_agent(max_tokens=100).propose(make_context(budget_usd=0.05))
    assert "without submitting" in str(info.value)
    assert (worktree / "train.py").read_text() == TRAIN_PY  # its edit did not run
    assert info.value.usage.cost_usd == pytest.approx(0.30)

    api.add(message(EDIT, SUBMIT, usage={"input_tokens": 100_000, "output_tokens": 0}))
    proposal = priced_agent(max_tokens=100).propose(make_context(budget_usd=0.05))
    assert proposal.description == "LR 0.01 -> 0.005"  # paid for and done: kept
    assert proposal.usage.cost_usd == pytest.approx(0.30)


def test_without_a_budget_nothing_is_projected(api, make_context):
    api.add(message(EDIT, usage={"input_tokens": 1_000_000, "output_tokens": 0}), message(SUBMIT, usage={"input_tokens": 0, "output_tokens": 0}))
    assert priced_agent().propose(make_context(budget_usd=None)).usage.cost_usd == pytest.approx(3.0)


# --- cancellation and the streamed text --------------------------------------------------


def test_cancel_while_streaming_stops_before_any_tool_runs(api, make_context, worktree):
    gate = threading.Event()
    api.add(message(text("Let me change the learning rate now."), EDIT, SUBMIT, gate=gate))
    holder = {}

    def emit(chunk: str) -> None:
        holder["ctx"].cancel.set()  # the engine gives up on the proposal mid-stream
        gate.set()

    ctx = holder["ctx"] = make_context(emit=emit)
    with pytest.raises(ProposalCancelled):
        agent().propose(ctx)
    assert (worktree / "train.py").read_text() == TRAIN_PY


def test_cancel_cuts_a_retry_wait_short_and_reports_what_was_spent(api, make_context):
    api.add(message(tool("read_file", path="train.py"), usage={"input_tokens": 1000, "output_tokens": 0}))
    api.add(error(529, "overloaded_error"), message(EDIT, SUBMIT))
    holder = {}

    def emit(chunk: str) -> None:
        if "retry 1 of" in chunk:
            holder["ctx"].cancel.set()

    ctx = holder["ctx"] = make_context(emit=emit)
    # A backoff of about a minute: the cancel must end it, or this test would take that long.
    a = ClaudeAgent(AgentConfig(model="claude-test-model", prices=PRICES, max_retries=2, request_timeout=10.0),
                    backoff_base=60.0, backoff_max=60.0)
    with pytest.raises(ProposalCancelled) as info:
        a.propose(ctx)
    assert len(api.requests) == 2
    assert info.value.usage.cost_usd == pytest.approx(0.003)  # the engine still accounts it


def test_streamed_text_is_stripped_of_control_bidi_and_invisible_characters(api, make_context):
    hidden = "".join(chr(0xE0000 + ord(c)) for c in "edit prepare.py")  # Unicode tag characters
    api.add(
        message(
            text(f"Plain \x1b[2Jstart \u202eevil\u202c zero\u200bwidth bell\x07 tag{hidden}ged \x9bend"),
            thinking("quiet\u2066ly\u2069 \x1b]0;title\x07thinking"),
            EDIT,
            SUBMIT,
        )
    )
    ctx = make_context()
    agent().propose(ctx)
    out = emitted(ctx)
    assert "Plain start evil zerowidth bell tagged end" in out
    assert "quietly thinking" in out
    for bad in ("\x1b", "\u202e", "\u202c", "\u200b", "\x07", "\x9b", "\u2066", "\U000e0065"):
        assert bad not in out

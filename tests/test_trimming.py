"""Tests for metered.trimming: fitting a conversation into a token limit."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metered.errors import ContextOverflow, InvalidRequest
from metered.fitting.trimming import TrimResult, trim_messages
from metered.tokens import ChatCounter, count_anthropic, count_chat

MODEL = "gpt-4o"
CLAUDE = "claude-sonnet-4-5"
Message = dict[str, Any]


def _user(text: str) -> Message:
    return {"role": "user", "content": text}


def _assistant(text: str) -> Message:
    return {"role": "assistant", "content": text}


def _tool_group(call_id: str, results: int = 1) -> list[Message]:
    calls = [
        {
            "id": f"{call_id}-{k}",
            "type": "function",
            "function": {"name": "lookup", "arguments": f'{{"q": "{call_id} {k}"}}'},
        }
        for k in range(results)
    ]
    return [
        {"role": "assistant", "content": None, "tool_calls": calls},
        *(
            {"role": "tool", "tool_call_id": f"{call_id}-{k}", "content": f"result {call_id} {k}"}
            for k in range(results)
        ),
    ]


def _cost(messages: list[Message], model: str = MODEL) -> int:
    counter = ChatCounter(model)
    return sum(counter.message(m) for m in messages)


def _ids(result: TrimResult, messages: list[Message]) -> list[int]:
    by_id = {id(m): i for i, m in enumerate(messages)}
    return [by_id[id(m)] for m in result.messages if id(m) in by_id]


SYSTEM: Message = {"role": "system", "content": "You are a terse assistant."}


def test_everything_fits() -> None:
    """When the conversation fits, nothing is dropped and the count is the chat count."""
    messages = [SYSTEM, _user("hi"), _assistant("hello"), _user("bye")]
    result = trim_messages(messages, model=MODEL, context_window=10_000)
    assert result.messages == messages
    assert (result.dropped, result.dropped_indices, result.trimmed) == ([], (), False)
    assert result.prompt_tokens == count_chat(messages, model=MODEL)


def test_drops_oldest_turns_keeps_system() -> None:
    """Oldest turns go first; the system message stays."""
    messages = [SYSTEM, _user("one " * 50), _assistant("two " * 50), _user("three")]
    limit = count_chat([SYSTEM, messages[2], messages[3]], model=MODEL)
    result = trim_messages(messages, model=MODEL, max_prompt_tokens=limit)
    assert result.messages == [SYSTEM, messages[2], messages[3]]
    assert result.dropped == [messages[1]]
    assert result.dropped_indices == (1,)
    assert result.prompt_tokens == limit


def test_kept_messages_are_the_callers_objects() -> None:
    """The result holds the original dicts, not copies."""
    messages = [SYSTEM, _user("a"), _assistant("b"), _user("c")]
    result = trim_messages(messages, model=MODEL, context_window=10_000)
    assert all(kept is orig for kept, orig in zip(result.messages, messages, strict=True))


def test_tool_call_and_results_dropped_together() -> None:
    """An assistant tool call and its tool results are never split."""
    group = _tool_group("c1", results=2)
    messages = [SYSTEM, _user("old question"), *group, _user("new question")]
    # room for the last tool result alone, but not for the whole group
    limit = count_chat([SYSTEM, messages[-1]], model=MODEL) + _cost(group[-1:])
    result = trim_messages(messages, model=MODEL, max_prompt_tokens=limit)
    assert result.messages == [SYSTEM, messages[-1]]
    assert result.dropped_indices == (1, 2, 3, 4)


def test_tool_group_after_last_user_is_kept_whole() -> None:
    """In an agent loop, the newest tool call and results are kept as one unit."""
    group = _tool_group("c2", results=3)
    messages = [SYSTEM, _user("old " * 40), _user("do it"), *group]
    limit = count_chat([SYSTEM, messages[2], *group], model=MODEL)
    result = trim_messages(messages, model=MODEL, max_prompt_tokens=limit)
    assert result.messages == [SYSTEM, messages[2], *group]


def test_last_user_message_alone_too_big_raises() -> None:
    """If the system messages and last user message cannot fit, ContextOverflow says by how much."""
    messages = [SYSTEM, _user("old"), _user("word " * 200)]
    needed = count_chat([SYSTEM, messages[-1]], model=MODEL)
    with pytest.raises(ContextOverflow) as info:
        trim_messages(messages, model=MODEL, context_window=needed + 10, reserved_output=11)
    assert (info.value.needed, info.value.limit) == (needed, needed - 1)
    assert info.value.reason == "context_overflow"


def test_last_user_message_kept_even_if_older_fit_better() -> None:
    """The last user message is kept even when dropping it would leave room for more."""
    messages = [_user("a"), _assistant("b"), _user("c " * 30)]
    limit = count_chat([messages[-1]], model=MODEL)
    result = trim_messages(messages, model=MODEL, max_prompt_tokens=limit)
    assert result.messages == [messages[-1]]


def test_no_holes_in_history() -> None:
    """Once a turn does not fit, older turns are dropped even if they would fit."""
    messages = [
        _user("tiny"),
        _assistant("huge " * 300),
        _user("small"),
        _assistant("ok"),
        _user("q"),
    ]
    limit = count_chat(messages[2:], model=MODEL) + _cost([messages[0]])
    result = trim_messages(messages, model=MODEL, max_prompt_tokens=limit)
    assert result.messages == messages[2:]
    assert result.dropped_indices == (0, 1)


def test_mid_conversation_system_message_kept() -> None:
    """A system message in the middle of the history is kept while turns around it go."""
    note = {"role": "developer", "content": "Now answer in French."}
    messages = [_user("x " * 100), note, _assistant("y " * 100), _user("z")]
    limit = count_chat([note, messages[-1]], model=MODEL)
    result = trim_messages(messages, model=MODEL, max_prompt_tokens=limit)
    assert result.messages == [note, messages[-1]]


def test_smaller_of_window_and_budget_applies() -> None:
    """The limit is min(context_window - reserved_output, max_prompt_tokens)."""
    messages = [_user("hi")]
    assert (
        trim_messages(messages, model=MODEL, context_window=1000, reserved_output=100).limit == 900
    )
    assert (
        trim_messages(
            messages, model=MODEL, context_window=1000, reserved_output=100, max_prompt_tokens=50
        ).limit
        == 50
    )


def test_tools_count_against_the_limit() -> None:
    """Tool definitions are part of the prompt and shrink the room for history."""
    tools = [{"type": "function", "function": {"name": "lookup", "description": "Look it up."}}]
    messages = [_user("old " * 20), _user("new")]
    tools_cost = count_chat([], model=MODEL, tools=tools) - count_chat([], model=MODEL)
    limit = count_chat(messages, model=MODEL) + tools_cost - 1
    assert not trim_messages(messages, model=MODEL, max_prompt_tokens=limit).trimmed
    with_tools = trim_messages(messages, model=MODEL, max_prompt_tokens=limit, tools=tools)
    assert with_tools.messages == [messages[-1]]
    assert with_tools.prompt_tokens == count_chat([messages[-1]], model=MODEL, tools=tools)


def test_non_object_message_is_invalid() -> None:
    """A message that is not an object is an InvalidRequest naming `messages`."""
    with pytest.raises(InvalidRequest) as info:
        trim_messages([_user("hi"), "hello"], model=MODEL, context_window=100)  # type: ignore[list-item]
    assert info.value.param == "messages"


def test_requires_a_limit() -> None:
    """Without a context window or a prompt budget there is nothing to trim to."""
    with pytest.raises(ValueError, match="context_window"):
        trim_messages([_user("hi")], model=MODEL)


def test_summary_replaces_dropped_turns() -> None:
    """The summarizer's message goes after the system messages and is counted."""
    messages = [SYSTEM, _user("one " * 50), _assistant("two " * 50), _user("three")]
    seen: list[list[Mapping[str, Any]]] = []

    def summarize(dropped: list[Mapping[str, Any]]) -> Mapping[str, Any]:
        seen.append(dropped)
        return {"role": "system", "content": "Earlier: counting."}

    limit = count_chat([SYSTEM, messages[-1]], model=MODEL) + 20
    result = trim_messages(messages, model=MODEL, max_prompt_tokens=limit, summarize=summarize)
    assert seen == [messages[1:3]]
    assert result.messages == [SYSTEM, result.summary, messages[-1]]
    assert result.summarized_indices == (1, 2)
    assert result.prompt_tokens == count_chat(result.messages, model=MODEL) <= limit


def test_summary_makes_room_by_dropping_oldest_kept() -> None:
    """A summary that does not fit pushes out the oldest kept turns."""
    messages = [_user("a " * 30), _assistant("b " * 10), _user("c " * 10), _user("final")]
    limit = count_chat(messages[1:], model=MODEL)
    summary = {"role": "user", "content": "summary " * 8}
    result = trim_messages(
        messages, model=MODEL, max_prompt_tokens=limit, summarize=lambda dropped: summary
    )
    assert result.summary is summary
    assert result.summarized_indices == (0,)
    assert result.messages[0] is summary
    assert result.dropped_indices[:2] == (0, 1)
    assert result.prompt_tokens == count_chat(result.messages, model=MODEL) <= limit


def test_summary_too_big_is_discarded() -> None:
    """A summary that cannot fit even alone is left out and nothing extra is dropped."""
    messages = [_user("a " * 30), _user("final")]
    limit = count_chat(messages[1:], model=MODEL)
    result = trim_messages(
        messages,
        model=MODEL,
        max_prompt_tokens=limit,
        summarize=lambda dropped: {"role": "user", "content": "long " * 100},
    )
    assert (result.summary, result.summarized_indices) == (None, ())
    assert result.messages == [messages[1]]


def test_summary_too_big_after_evictions_keeps_history() -> None:
    """When even evicting every kept turn leaves no room, the summary is dropped, not the turns."""
    messages = [_user("a " * 30), _assistant("b"), _user("final")]
    limit = count_chat(messages[1:], model=MODEL)
    result = trim_messages(
        messages,
        model=MODEL,
        max_prompt_tokens=limit,
        summarize=lambda dropped: {"role": "user", "content": "long " * 100},
    )
    assert result.summary is None
    assert result.messages == messages[1:]
    assert result.prompt_tokens == limit


def test_summary_not_requested_when_nothing_dropped() -> None:
    """The summarizer is not called when everything fits."""

    def summarize(dropped: list[Mapping[str, Any]]) -> Mapping[str, Any]:
        raise AssertionError("called")

    result = trim_messages([_user("hi")], model=MODEL, context_window=100, summarize=summarize)
    assert result.summary is None


def test_anthropic_shape_counts_system_and_keeps_pairs() -> None:
    """Anthropic: system is separate and counted; tool_use/tool_result pairs stay together."""
    use = {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "t1", "name": "lookup", "input": {"q": "x"}}],
    }
    result_msg = {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "found " * 30}],
    }
    messages = [_user("old " * 30), use, result_msg, _assistant("done"), _user("next")]
    system = "You are Claude."
    limit = count_anthropic([messages[-1]], model=CLAUDE, system=system) + 5
    result = trim_messages(
        messages, model=CLAUDE, max_prompt_tokens=limit, system=system, shape="anthropic"
    )
    assert result.messages == [messages[-1]]
    assert result.prompt_tokens == count_anthropic(result.messages, model=CLAUDE, system=system)
    assert result.exact is False


def test_anthropic_history_opens_with_user() -> None:
    """Anthropic: a kept history never starts with an assistant turn."""
    messages = [_user("u1 " * 40), _assistant("a1"), _user("u2")]
    limit = count_anthropic(messages[1:], model=CLAUDE)
    result = trim_messages(messages, model=CLAUDE, max_prompt_tokens=limit, shape="anthropic")
    assert result.messages == [messages[-1]]
    assert result.dropped_indices == (0, 1)


# --------------------------------------------------------------------------------------
# property tests
# --------------------------------------------------------------------------------------

_words = st.lists(
    st.sampled_from(["alpha", "beta", "gamma", "δέλτα", "数据", "42", "\n", "tool", "🙂"]),
    min_size=0,
    max_size=40,
).map(" ".join)


@st.composite
def conversations(draw: st.DrawFn) -> list[Message]:
    """OpenAI conversations: leading/mid system messages, turns and tool-call groups."""
    messages: list[Message] = [
        {"role": "system", "content": draw(_words)} for _ in range(draw(st.integers(0, 2)))
    ]
    for n in range(draw(st.integers(0, 25))):
        kind = draw(st.sampled_from(["user", "assistant", "tools", "system"]))
        if kind == "tools":
            messages.extend(_tool_group(f"g{n}", results=draw(st.integers(1, 3))))
        else:
            messages.append({"role": kind, "content": draw(_words)})
    if draw(st.booleans()) or not any(m["role"] == "user" for m in messages):
        messages.append(_user(draw(_words)))
    return messages


def _groups(messages: list[Message]) -> list[list[int]]:
    groups: list[list[int]] = []
    for i, m in enumerate(messages):
        if m["role"] == "tool" and groups and messages[groups[-1][0]].get("tool_calls"):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=conversations(), fraction=st.floats(0.0, 1.2))
def test_trimming_invariants(messages: list[Message], fraction: float) -> None:
    """Random conversations: within limit, system and last user kept, groups whole, no holes."""
    full = count_chat(messages, model=MODEL)
    limit = int(full * fraction)
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    pinned = sorted({i for i, m in enumerate(messages) if m["role"] == "system"} | {last_user})
    needed = count_chat([messages[i] for i in pinned], model=MODEL)
    if needed > limit:
        with pytest.raises(ContextOverflow) as info:
            trim_messages(messages, model=MODEL, max_prompt_tokens=limit)
        assert (info.value.needed, info.value.limit) == (needed, limit)
        return
    result = trim_messages(messages, model=MODEL, max_prompt_tokens=limit)

    kept = _ids(result, messages)
    assert result.prompt_tokens == count_chat(result.messages, model=MODEL) <= limit
    assert kept == sorted(kept)  # original order
    assert set(pinned) <= set(kept)
    assert sorted(set(kept) | set(result.dropped_indices)) == list(range(len(messages)))
    assert not set(kept) & set(result.dropped_indices)
    assert result.dropped == [messages[i] for i in result.dropped_indices]

    groups = [g for g in _groups(messages) if not set(g) & set(pinned)]
    for group in groups:
        assert set(group) <= set(kept) or set(group) <= set(result.dropped_indices)
    dropped_groups = [g for g in groups if g[0] in result.dropped_indices]
    kept_groups = [g for g in groups if g[0] in kept]
    if dropped_groups and kept_groups:
        assert max(g[0] for g in dropped_groups) < min(g[0] for g in kept_groups)
    if dropped_groups:  # the newest dropped turn really did not fit
        newest = dropped_groups[-1]
        assert result.prompt_tokens + _cost([messages[i] for i in newest]) > limit


@st.composite
def anthropic_conversations(draw: st.DrawFn) -> list[Message]:
    """Anthropic conversations alternating user/assistant, with tool_use/tool_result pairs."""
    messages: list[Message] = []
    for n in range(draw(st.integers(0, 12))):
        messages.append(_user(draw(_words)))
        if draw(st.booleans()):
            messages.append(
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": f"t{n}", "name": "f", "input": {}}],
                }
            )
            messages.append(
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": f"t{n}", "content": "r"}],
                }
            )
        messages.append(_assistant(draw(_words)))
    messages.append(_user(draw(_words)))
    return messages


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=anthropic_conversations(), fraction=st.floats(0.0, 1.2))
def test_anthropic_trimming_invariants(messages: list[Message], fraction: float) -> None:
    """Anthropic shape: within limit, opens with a user turn, tool pairs whole, last user kept."""
    system = "Be helpful."
    limit = int(count_anthropic(messages, model=CLAUDE, system=system) * fraction)
    if count_anthropic(messages[-1:], model=CLAUDE, system=system) > limit:
        with pytest.raises(ContextOverflow):
            trim_messages(
                messages, model=CLAUDE, max_prompt_tokens=limit, system=system, shape="anthropic"
            )
        return
    result = trim_messages(
        messages, model=CLAUDE, max_prompt_tokens=limit, system=system, shape="anthropic"
    )
    kept = _ids(result, messages)
    assert result.prompt_tokens == count_anthropic(result.messages, model=CLAUDE, system=system)
    assert result.prompt_tokens <= limit
    assert kept[-1] == len(messages) - 1
    assert result.messages[0]["role"] == "user"
    assert kept == list(range(kept[0], len(messages)))  # one contiguous, newest stretch
    for i, m in enumerate(messages):
        if isinstance(m["content"], list) and m["content"][0]["type"] == "tool_use":
            assert (i in kept) == (i + 1 in kept)

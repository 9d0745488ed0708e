"""History trimming: fit a conversation into the context window and the caller's budget.

The limit is ``context_window - reserved_output`` and/or ``max_prompt_tokens`` (what the
caller's remaining budget can pay for), whichever is smaller. Trimming keeps:

* every ``system`` / ``developer`` message (OpenAI shape; Anthropic's ``system`` and
  Gemini's ``systemInstruction`` are separate and always counted),
* the last ``user`` message, and the tool-call group it belongs to,
* the newest turns that fit, as one contiguous stretch: once a turn does not fit, every
  older turn is dropped too, so the model never sees a history with holes.

An assistant message with ``tool_calls`` (or a legacy ``function_call``) and the ``tool``
results that follow it are one unit, kept or dropped together; in Anthropic shape an
assistant ``tool_use`` message and the next user message carrying ``tool_result`` blocks
are; in Gemini shape (``contents``) a ``model`` turn with ``functionCall`` parts and the
next ``user`` turn carrying ``functionResponse`` parts are. Messages are counted once each
(:class:`metered.tokens.ChatCounter`), newest first, and only as far back as the first
turn that does not fit: trimming a history of *n* messages costs an O(n) scan of roles
plus encoding what is kept (and one turn more).

A *summarizer* may replace what was dropped: it receives the dropped messages and returns
one message, which is counted and inserted after the system messages. If it does not fit
in the room left, the oldest kept turns are dropped to make room (they are listed in
:attr:`TrimResult.dropped`, but the summary does not cover them); if it cannot fit even
then, it is discarded. metered never calls an LLM itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from metered.errors import ContextOverflow, InvalidRequest
from metered.tokens import ChatCounter, Shape

__all__ = ["Summarizer", "TrimResult", "trim_messages"]

Summarizer = Callable[[list[Mapping[str, Any]]], Mapping[str, Any]]

_PINNED_ROLES = frozenset({"system", "developer"})
_TOOL_RESULT_ROLES = frozenset({"tool", "function"})


@dataclass(frozen=True, slots=True)
class TrimResult:
    """What to send after trimming.

    Attributes:
        messages: the kept messages (the caller's own objects, in their original order),
            plus :attr:`summary` after the system messages when one was inserted.
        dropped: the removed messages, in their original order.
        dropped_indices: their indices in the input list.
        prompt_tokens: prompt tokens of the result (messages, tools, system, priming).
        limit: the prompt-token limit that was applied.
        summary: the summarizer's message, if one was inserted.
        summarized_indices: indices of the messages the summary was made from.
        exact: ``False`` when any count was an estimate (see :class:`~metered.tokens.TokenCount`).
    """

    messages: list[Mapping[str, Any]]
    dropped: list[Mapping[str, Any]]
    dropped_indices: tuple[int, ...]
    prompt_tokens: int
    limit: int
    summary: Mapping[str, Any] | None = None
    summarized_indices: tuple[int, ...] = ()
    exact: bool = True

    @property
    def trimmed(self) -> bool:
        """Whether any message was dropped."""
        return bool(self.dropped_indices)


def _has_blocks(message: Mapping[str, Any], kind: str) -> bool:
    content = message.get("content")
    return isinstance(content, list) and any(
        isinstance(block, Mapping) and block.get("type") == kind for block in content
    )


def _has_parts(content: Mapping[str, Any], camel: str, snake: str) -> bool:
    parts = content.get("parts")
    return isinstance(parts, list) and any(
        isinstance(part, Mapping) and (part.get(camel) is not None or part.get(snake) is not None)
        for part in parts
    )


def _unit_start(
    messages: Sequence[Mapping[str, Any]], roles: list[Any], end: int, shape: Shape
) -> int:
    """Start of the unit (messages kept or dropped together) that ends just before ``end``."""
    last = end - 1
    if shape == "openai":
        if roles[last] not in _TOOL_RESULT_ROLES:
            return last
        start = last
        while start > 0 and roles[start - 1] in _TOOL_RESULT_ROLES:
            start -= 1
        call = start - 1
        if call >= 0 and roles[call] == "assistant":
            message = messages[call]
            if message.get("tool_calls") or message.get("function_call"):
                return call
        return start
    if shape == "gemini":
        if (
            last > 0
            and roles[last] == "user"
            and roles[last - 1] == "model"
            and _has_parts(messages[last], "functionResponse", "function_response")
            and _has_parts(messages[last - 1], "functionCall", "function_call")
        ):
            return last - 1
        return last
    if (
        last > 0
        and roles[last] == "user"
        and roles[last - 1] == "assistant"
        and _has_blocks(messages[last], "tool_result")
        and _has_blocks(messages[last - 1], "tool_use")
    ):
        return last - 1
    return last


def _limit(context_window: int | None, reserved_output: int, max_prompt_tokens: int | None) -> int:
    for name, value in (
        ("context_window", context_window),
        ("reserved_output", reserved_output),
        ("max_prompt_tokens", max_prompt_tokens),
    ):
        if value is not None and (type(value) is not int or value < 0):
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    limits = [] if context_window is None else [context_window - reserved_output]
    if max_prompt_tokens is not None:
        limits.append(max_prompt_tokens)
    if not limits:
        raise ValueError("pass context_window and/or max_prompt_tokens")
    return max(0, min(limits))


def trim_messages(
    messages: Sequence[Mapping[str, Any]],
    *,
    model: str,
    context_window: int | None = None,
    reserved_output: int = 0,
    max_prompt_tokens: int | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    system: Any = None,
    shape: Shape = "openai",
    summarize: Summarizer | None = None,
) -> TrimResult:
    """Drop the oldest turns until the prompt fits.

    Args:
        messages: the conversation (OpenAI chat or Anthropic ``messages`` shape, or Gemini
            ``contents``, whose role defaults to ``user``).
        model: the model id, for counting.
        context_window: the model's context window, in tokens.
        reserved_output: tokens kept free for the reply (usually the output limit).
        max_prompt_tokens: a further limit, e.g. what the remaining budget can pay for.
        tools: the request's tool definitions (counted, never trimmed).
        system: Anthropic's top-level ``system`` or Gemini's ``systemInstruction``
            (counted, never trimmed).
        shape: ``"openai"``, ``"anthropic"`` or ``"gemini"``.
        summarize: optional; receives the dropped messages, returns one message.

    Returns:
        The kept messages, what was dropped and the resulting prompt tokens.

    Raises:
        ContextOverflow: the system messages, tools and the last user message alone do
            not fit (``needed`` and ``limit`` say by how much).
        ValueError: no limit given, or a negative one.
    """
    limit = _limit(context_window, reserved_output, max_prompt_tokens)
    n = len(messages)
    try:
        roles = [m.get("role") for m in messages]
        if shape == "gemini":  # a content without a role is the user's
            roles = [role or "user" for role in roles]
    except AttributeError:
        raise InvalidRequest("every message must be an object", param="messages") from None
    counter = ChatCounter(model, shape=shape)
    count = counter.message

    def cost_of(start: int, end: int) -> int:
        return sum(count(messages[i]) for i in range(start, end))

    # Pinned: system/developer messages and the unit holding the last user message.
    pinned: set[int] = set()
    if "user" in roles:
        last_user = n - 1 - roles[::-1].index("user")
        pinned.update(range(_unit_start(messages, roles, last_user + 1, shape), last_user + 1))
    if shape == "openai":
        pinned.update(i for i, role in enumerate(roles) if role in _PINNED_ROLES)
    fixed = counter.reply_priming + counter.tools(tools) + counter.system(system)
    needed = fixed + sum(count(messages[i]) for i in pinned)
    if needed > limit:
        raise ContextOverflow(model, needed=needed, limit=limit)

    # Walk back from the newest unit; units older than the first misfit are never counted.
    keep = bytearray(n)
    for i in pinned:
        keep[i] = 1
    kept_units: list[tuple[int, int, int]] = []  # (start, end, tokens), newest first
    room = limit - needed
    end = n
    while end > 0:
        start = _unit_start(messages, roles, end, shape)
        if start in pinned:
            end = start
            continue
        cost = cost_of(start, end)
        if cost > room:
            break  # everything older goes too: no holes in the history
        kept_units.append((start, end, cost))
        keep[start:end] = b"\x01" * (end - start)
        room -= cost
        end = start

    evictable = kept_units[::-1]  # oldest first
    if shape != "openai":
        # the Messages API wants the history to open with a user turn, and Gemini a
        # function call to follow a user turn
        first_pinned = min(pinned, default=n)
        skip = 0
        while (
            skip < len(evictable)
            and evictable[skip][0] < first_pinned
            and roles[evictable[skip][0]] != "user"
        ):
            start, end, cost = evictable[skip]
            keep[start:end] = bytes(end - start)
            room += cost
            skip += 1
        del evictable[:skip]

    summary: Mapping[str, Any] | None = None
    summarized: tuple[int, ...] = ()
    if summarize is not None and not all(keep):
        summarized = tuple([i for i, k in enumerate(keep) if not k])
        candidate = summarize([messages[i] for i in summarized])
        if not isinstance(candidate, Mapping):
            raise TypeError(f"summarize must return a message mapping, got {candidate!r}")
        cost = count(candidate)
        evict = 0
        freed = 0
        while cost > room + freed and evict < len(evictable):
            freed += evictable[evict][2]
            evict += 1
        if cost <= room + freed:
            summary = candidate
            room += freed - cost
            for start, end, _ in evictable[:evict]:
                keep[start:end] = bytes(end - start)
        else:
            summarized = ()  # cannot fit even alone: keep the history as trimmed

    kept = [m for m, k in zip(messages, keep, strict=True) if k]
    dropped_indices = tuple([i for i, k in enumerate(keep) if not k])
    if summary is not None:
        at = 0
        if shape == "openai":
            while at < len(kept) and kept[at].get("role") in _PINNED_ROLES:
                at += 1
        kept.insert(at, summary)
    return TrimResult(
        messages=kept,
        dropped=[messages[i] for i in dropped_indices],
        dropped_indices=dropped_indices,
        prompt_tokens=limit - room,
        limit=limit,
        summary=summary,
        summarized_indices=summarized,
        exact=counter.exact,
    )

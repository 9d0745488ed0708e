"""Token counting and trimming cost, as ratios to baselines measured in the same run.

1. Chat counting vs raw ``enc.encode`` of the same message texts (cold: count cache
   cleared before every run; warm: the same conversation counted again).
2. Re-counting a conversation that grows by one message per turn (what a metered chat app
   does on every call): the cookbook's re-encode-everything loop vs ``count_chat``.
3. Trimming a 10,000-message history vs seed 003's ``trim_messages`` loop (transcribed
   below, with the encoding passed in: its ``tiktoken.encoding_for_model`` call would need
   the network here, so the seed is spared that cost). Cold (nothing cached, one-off
   trim) and per turn (the history was trimmed on the previous turn and grew by one).
4. Loading o200k_base from the bundled file vs tiktoken's own loader (load_tiktoken_bpe,
   cache disabled) on the same ranks: time, RSS growth and Python heap, each in a fresh
   subprocess. tracemalloc sees only the Python heap (the ranks dict tiktoken.Encoding
   keeps); the rest of the RSS is tiktoken's Rust CoreBPE.

Ratios > 1 mean metered is faster. Best of ROUNDS runs each.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

from metered import tokens
from metered.fitting.trimming import trim_messages
from metered.tokens import count_chat, encodings, get_encoding

ROUNDS = 3
MODEL = "gpt-4o"
HISTORY = 10_000
Message = dict[str, Any]
Row = tuple[str, str, str]

_WORDS = """the meter counts every token before the call so budgets hold and nothing is
billed twice ledger settle reserve refund stream chunk usage price margin tier cap trim
naïve café 数据 プロンプト 🙂 def return {} [] () 2048 3.14159 https://example.com/a?b=c"""
_VOCAB = _WORDS.split()


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_VOCAB) for _ in range(words))


def _conversation(n: int, seed: int) -> list[Message]:
    rng = random.Random(seed)
    messages: list[Message] = [{"role": "system", "content": _text(rng, 60)}]
    for i in range(n - 1):
        role = "user" if i % 2 == 0 else "assistant"
        messages.append({"role": role, "content": _text(rng, rng.randrange(5, 250))})
    return messages


def _best(run: Callable[[], object], *, before: Callable[[], None] | None = None) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        if before is not None:
            before()
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def _clear_counts() -> None:
    encodings._get_loaded(tokens.encoding_name_for_model(MODEL)).cache.clear()


def seed_trim_messages(messages: list[Message], enc: Any, max_tokens: int = 2000) -> list[Message]:
    """Seed 003's trim_messages, transcribed; ``enc`` replaces encoding_for_model("gpt-4o")."""
    result = [m for m in messages if m["role"] == "system"]
    recent = [m for m in messages if m["role"] != "system"]
    recent.reverse()
    used = sum(len(enc.encode(m["content"])) for m in result)
    for msg in recent:
        msg_tokens = len(enc.encode(msg["content"]))
        if used + msg_tokens < max_tokens:
            result.insert(1, msg)
            used += msg_tokens
    return result


def _counting(rows: list[Row]) -> None:
    enc = get_encoding("o200k_base")
    messages = _conversation(2000, seed=1)
    texts = [m["content"] for m in messages]
    raw = _best(lambda: [len(enc.encode(t)) for t in texts])
    ordinary = _best(lambda: [len(enc.encode_ordinary(t)) for t in texts])
    cold = _best(lambda: count_chat(messages, model=MODEL), before=_clear_counts)
    warm = _best(lambda: count_chat(messages, model=MODEL))
    chars = sum(map(len, texts))
    rows.append(
        (
            "count_chat, 2,000 msgs, cold cache",
            f"{cold * 1e3:.1f} ms",
            f"{raw / cold:.2f}x enc.encode, {ordinary / cold:.2f}x enc.encode_ordinary",
        )
    )
    rows.append(
        (
            "count_chat, same msgs, warm cache",
            f"{warm * 1e3:.2f} ms",
            f"{raw / warm:.1f}x enc.encode",
        )
    )
    rows.append(
        ("  (enc.encode of the texts)", f"{raw * 1e3:.1f} ms", f"{chars / raw / 1e6:.1f} M chars/s")
    )


def _growing(rows: list[Row]) -> None:
    enc = get_encoding("o200k_base")
    messages = _conversation(301, seed=2)

    def naive() -> None:
        for turn in range(2, len(messages) + 1):
            sum(
                3 + len(enc.encode(m["role"])) + len(enc.encode(m["content"]))
                for m in messages[:turn]
            )

    def ours() -> None:
        for turn in range(2, len(messages) + 1):
            count_chat(messages[:turn], model=MODEL)

    base = _best(naive)
    mine = _best(ours, before=_clear_counts)
    rows.append(
        ("count per turn, 300-turn chat", f"{mine * 1e3:.1f} ms", f"{base / mine:.1f}x re-encode")
    )


def _trim_scenario(rows: list[Row], history: list[Message], label: str, limit: int) -> None:
    enc = get_encoding("o200k_base")
    seed = _best(lambda: seed_trim_messages(history, enc, max_tokens=limit))
    cold = _best(
        lambda: trim_messages(history, model=MODEL, max_prompt_tokens=limit), before=_clear_counts
    )
    kept = len(trim_messages(history, model=MODEL, max_prompt_tokens=limit).messages)
    # per turn: the previous turn's trim cached the kept messages; one new message arrived
    grown = [*history]
    rng = random.Random(4)

    def next_turn() -> None:
        grown.append({"role": "user", "content": _text(rng, 80)})
        trim_messages(grown, model=MODEL, max_prompt_tokens=limit)

    def seed_turn() -> None:
        grown.append({"role": "user", "content": _text(rng, 80)})
        seed_trim_messages(grown, enc, max_tokens=limit)

    next_turn()
    per_turn = _best(next_turn)
    seed_per_turn = _best(seed_turn)
    rows.append(
        (f"trim 10k msgs to {label}, cold", f"{cold * 1e3:.1f} ms", f"{seed / cold:.1f}x seed")
    )
    rows.append(
        (
            f"trim 10k msgs to {label}, per turn",
            f"{per_turn * 1e3:.2f} ms",
            f"{seed_per_turn / per_turn:.0f}x seed",
        )
    )
    rows.append((f"  (seed loop; metered kept {kept} msgs)", f"{seed * 1e3:.1f} ms", ""))


def _trimming(rows: list[Row]) -> None:
    history = _conversation(HISTORY, seed=3)
    total = count_chat(history, model=MODEL)
    rows.append((f"  (history: {HISTORY:,} msgs, {total:,} tokens)", "", ""))
    _trim_scenario(rows, history, "128k window", 128_000 - 4_096)
    _trim_scenario(rows, history, "8k budget", 8_000)


_MEMORY_SCRIPT = """
import json, os, sys, time, tracemalloc
import tiktoken, tiktoken.load
import metered.tokens as t
from metered.tokens import encodings

def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) * 1024

def load():
    if sys.argv[1] == "metered":
        return t.get_encoding("o200k_base")
    spec = encodings._BUNDLED["o200k_base"]
    ranks = tiktoken.load.load_tiktoken_bpe(sys.argv[3], expected_hash=spec.sha256)
    special = dict(spec.special_tokens)
    return tiktoken.Encoding(
        "o200k_base", pat_str=spec.pat_str, mergeable_ranks=ranks, special_tokens=special
    )

trace = sys.argv[2] == "trace"
before = rss()
if trace:
    tracemalloc.start()
start = time.perf_counter()
enc = load()
seconds = time.perf_counter() - start
heap, peak = tracemalloc.get_traced_memory() if trace else (0, 0)
print(json.dumps({"seconds": seconds, "rss": rss() - before, "heap": heap, "peak": peak}))
"""


def _load(who: str, mode: str, ranks_file: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, who, mode, ranks_file],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TIKTOKEN_CACHE_DIR": ""},  # tiktoken's loader must not cache
    )
    result: dict[str, float] = json.loads(done.stdout)
    return result


def _memory(rows: list[Row]) -> None:
    """Loading o200k from the bundled file vs tiktoken's own loader on the same file."""
    with tempfile.TemporaryDirectory() as folder:
        ranks_file = os.path.join(folder, "o200k_base.tiktoken")
        gz = resources.files("metered") / "_data" / "o200k_base.tiktoken.gz"
        with open(ranks_file, "wb") as f:
            f.write(gzip.decompress(gz.read_bytes()))
        ours = _load("metered", "plain", ranks_file)
        theirs = _load("tiktoken", "plain", ranks_file)
        ours_heap = _load("metered", "trace", ranks_file)
        theirs_heap = _load("tiktoken", "trace", ranks_file)
    mib = 2**20
    rows.append(
        (
            "load o200k_base, fresh process",
            f"{ours['seconds'] * 1e3:.0f} ms",
            f"{theirs['seconds'] / ours['seconds']:.2f}x tiktoken.load "
            f"({theirs['seconds'] * 1e3:.0f} ms)",
        )
    )
    rows.append(
        (
            "  RSS growth",
            f"{ours['rss'] / mib:.1f} MiB",
            f"tiktoken.load: {theirs['rss'] / mib:.1f} MiB",
        )
    )
    rows.append(
        (
            "  Python heap kept (tracemalloc)",
            f"{ours_heap['heap'] / mib:.1f} MiB",
            f"tiktoken.load: {theirs_heap['heap'] / mib:.1f} MiB",
        )
    )
    rows.append(
        (
            "  Python heap peak while loading",
            f"{ours_heap['peak'] / mib:.1f} MiB",
            f"tiktoken.load: {theirs_heap['peak'] / mib:.1f} MiB",
        )
    )


def main() -> None:
    rows: list[Row] = []
    get_encoding("o200k_base")  # load outside the timings
    _counting(rows)
    _growing(rows)
    _trimming(rows)
    _memory(rows)
    width = max(len(r[0]) for r in rows)
    print(f"{'scenario':<{width}}  {'metered':>10}  vs baseline")
    for name, value, ratio in rows:
        print(f"{name:<{width}}  {value:>10}  {ratio}")


if __name__ == "__main__":
    main()

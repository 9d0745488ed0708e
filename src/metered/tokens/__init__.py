"""Offline token counting: bundled encodings, chat/tool/image rules, pre-call estimates.

Encodings
    ``o200k_base`` and ``cl100k_base`` ship inside the package (``metered/_data``,
    gzip-compressed copies of OpenAI's ``.tiktoken`` rank files, see ``_data/NOTICE``).
    They are loaded on first use, checked against tiktoken's published sha256 and turned
    into a :class:`tiktoken.Encoding` directly: no network, no environment variables, no
    writes to tiktoken's cache, nothing registered in tiktoken's global registry. Any
    other encoding name falls back to :func:`tiktoken.get_encoding` (which may download).

Text
    A text's count is ``len(enc.encode_ordinary(text))``, which tiktoken documents as
    equal to ``enc.encode(text, disallowed_special=())``: special-token text such as
    ``<|endoftext|>`` in user content counts as ordinary text, the way the API treats it.

Chat
    Messages are counted with the rules of OpenAI's cookbook "How to count tokens with
    tiktoken" (3 tokens per message, +1 per ``name``, +3 to prime the reply; every string
    field's text). Tool definitions use the cookbook's ``num_tokens_for_tools`` formula,
    which reproduces the API's reported counts for the cookbook's example (105 tokens on
    gpt-4 / gpt-3.5-turbo, 101 on gpt-4o / gpt-4o-mini). Nested schemas, tool calls in the
    history and other shapes the cookbook does not cover are approximated, and the count
    is then marked inexact (:attr:`TokenCount.exact` is ``False``).

Models without a public tokenizer (Claude, Gemini, Llama, Mistral, unknown ids) are
counted with ``o200k_base`` and marked estimated; :func:`set_model_encoding` overrides
the choice per model id or prefix.

Per-text counts are memoised in a bounded LRU (by total characters), so re-counting a
conversation that grows by one message per turn costs only the new message.
"""

from __future__ import annotations

import binascii
import gzip
import hashlib
import json
import math
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Final, Literal

from metered.errors import InvalidRequest, MeteredError
from metered.usage import Usage

if TYPE_CHECKING:
    import tiktoken

__all__ = [
    "ChatCounter",
    "Shape",
    "TokenCount",
    "count_anthropic",
    "count_chat",
    "count_request",
    "count_text",
    "encoding_for_model",
    "encoding_name_for_model",
    "estimate_usage",
    "get_encoding",
    "is_exact",
    "set_model_encoding",
]

Shape = Literal["openai", "anthropic"]

# --------------------------------------------------------------------------------------
# Bundled encodings
# --------------------------------------------------------------------------------------

_ENDOFTEXT = "<|endoftext|>"
_FIM_PREFIX = "<|fim_prefix|>"
_FIM_MIDDLE = "<|fim_middle|>"
_FIM_SUFFIX = "<|fim_suffix|>"
_ENDOFPROMPT = "<|endofprompt|>"

# pat_str and special tokens are tiktoken_ext.openai_public's definitions, copied so that
# building the encoding never calls its constructors (they fetch the rank files by URL).
# tests/test_tokens.py asserts they still equal the installed tiktoken's.
_CL100K_PAT: Final = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_O200K_PAT: Final = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)


@dataclass(frozen=True)
class _Bundled:
    file: str
    sha256: str
    pat_str: str
    special_tokens: Mapping[str, int]


_BUNDLED: Final[Mapping[str, _Bundled]] = {
    "o200k_base": _Bundled(
        file="o200k_base.tiktoken.gz",
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        pat_str=_O200K_PAT,
        special_tokens={_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
    ),
    "cl100k_base": _Bundled(
        file="cl100k_base.tiktoken.gz",
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        pat_str=_CL100K_PAT,
        special_tokens={
            _ENDOFTEXT: 100257,
            _FIM_PREFIX: 100258,
            _FIM_MIDDLE: 100259,
            _FIM_SUFFIX: 100260,
            _ENDOFPROMPT: 100276,
        },
    ),
}

# Total characters of text kept in the count cache, per encoding. A cached entry holds a
# reference to its text; most are alive anyway (the caller's conversation), so the real
# cost is the dict, and this bound keeps the worst case at a few MB.
_CACHE_MAX_CHARS: Final = 1 << 22
# Texts larger than this are counted but not cached, so one huge document cannot evict
# every chat message.
_CACHE_MAX_ENTRY_CHARS: Final = 1 << 18


class _CountCache:
    """Token count per text, least recently used evicted first, bounded by characters."""

    __slots__ = ("_chars", "_encode", "_entries", "_lock")

    def __init__(self, encoding: tiktoken.Encoding) -> None:
        self._encode = encoding.encode_ordinary
        self._entries: OrderedDict[str, int] = OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()

    def count(self, text: str) -> int:
        entries = self._entries
        n = entries.get(text)
        if n is not None:
            # A hit needs no lock: get and move_to_end are each atomic, and a text evicted
            # in between is merely not moved (counts never change, only their recency).
            try:  # noqa: SIM105 (contextlib.suppress costs more than the hit itself)
                entries.move_to_end(text)
            except KeyError:
                pass
            return n
        # Encode outside the lock: two threads may count the same text once each, which
        # is cheaper than serialising every encode.
        n = len(self._encode(text))
        size = len(text)
        if size <= _CACHE_MAX_ENTRY_CHARS:
            with self._lock:
                if text not in entries:
                    entries[text] = n
                    self._chars += size
                    while self._chars > _CACHE_MAX_CHARS:
                        old, _ = entries.popitem(last=False)
                        self._chars -= len(old)
        return n

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._chars = 0


@dataclass(frozen=True)
class _Loaded:
    encoding: tiktoken.Encoding
    cache: _CountCache


_loaded: dict[str, _Loaded] = {}
_load_lock = threading.Lock()


def _read_ranks(spec: _Bundled) -> dict[bytes, int]:
    raw = gzip.decompress((resources.files("metered") / "_data" / spec.file).read_bytes())
    digest = hashlib.sha256(raw).hexdigest()
    if digest != spec.sha256:
        raise MeteredError(
            f"bundled encoding file metered/_data/{spec.file} is corrupt (sha256 {digest}, "
            f"expected {spec.sha256}); reinstall metered"
        )
    # The verified file is "<base64 token> <rank>" lines; split() on the whole buffer and
    # pairing the halves is ~25% faster than a per-line loop.
    fields = raw.split()
    a2b = binascii.a2b_base64
    return dict(zip(map(a2b, fields[0::2]), map(int, fields[1::2]), strict=True))


def _build(name: str) -> tiktoken.Encoding:
    import tiktoken  # deferred: importing tiktoken costs ~15 ms, only pay it to count

    spec = _BUNDLED.get(name)
    if spec is None:
        return tiktoken.get_encoding(name)
    return tiktoken.Encoding(
        name,
        pat_str=spec.pat_str,
        mergeable_ranks=_read_ranks(spec),
        special_tokens=dict(spec.special_tokens),
    )


def _get_loaded(name: str) -> _Loaded:
    loaded = _loaded.get(name)
    if loaded is None:
        with _load_lock:
            loaded = _loaded.get(name)
            if loaded is None:
                encoding = _build(name)
                loaded = _Loaded(encoding, _CountCache(encoding))
                _loaded[name] = loaded
    return loaded


def get_encoding(name: str) -> tiktoken.Encoding:
    """The encoding called ``name``, loaded once per process.

    ``o200k_base`` and ``cl100k_base`` come from the files bundled with metered (offline,
    sha256-checked); other names are delegated to :func:`tiktoken.get_encoding`.

    Raises:
        MeteredError: a bundled file does not match its published hash.
        ValueError: tiktoken does not know the name.
    """
    return _get_loaded(name).encoding


# --------------------------------------------------------------------------------------
# Model -> encoding and counting rules
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ChatRules:
    """Framing overheads of one model family (cookbook constants)."""

    per_message: int
    per_name: int
    reply_priming: int
    func_init: int
    prop_init: int = 3
    prop_key: int = 3
    enum_init: int = -3
    enum_item: int = 3
    func_end: int = 12


_O200K_RULES: Final = _ChatRules(per_message=3, per_name=1, reply_priming=3, func_init=7)
_CL100K_RULES: Final = _ChatRules(per_message=3, per_name=1, reply_priming=3, func_init=10)
_GPT35_0301_RULES: Final = _ChatRules(per_message=4, per_name=-1, reply_priming=3, func_init=10)


@dataclass(frozen=True, slots=True)
class _Tiles:
    """OpenAI's tile formula: ``base + tile * n_tiles`` (``base`` alone at detail low)."""

    base: int
    tile: int


_GPT4O_TILES: Final = _Tiles(85, 170)
_GPT4O_MINI_TILES: Final = _Tiles(2833, 5667)


@dataclass(frozen=True, slots=True)
class _Tokenizer:
    encoding: str
    exact: bool
    rules: _ChatRules
    tiles: _Tiles
    tiles_exact: bool


# First matching prefix wins; a prefix matches at a boundary (end of id or a non-alnum
# character), so "gpt-4" does not match "gpt-4o" and "o1" does not match "o10".
_PREFIXES: Final[tuple[tuple[str, str], ...]] = (
    ("gpt-4o", "o200k_base"),
    ("chatgpt-4o", "o200k_base"),
    ("gpt-4.1", "o200k_base"),
    ("gpt-4.5", "o200k_base"),
    ("gpt-5", "o200k_base"),
    ("o1", "o200k_base"),
    ("o3", "o200k_base"),
    ("o4", "o200k_base"),
    ("codex-mini", "o200k_base"),
    ("gpt-4", "cl100k_base"),
    ("gpt-3.5", "cl100k_base"),
    ("gpt-35", "cl100k_base"),
    ("text-embedding-3", "cl100k_base"),
    ("text-embedding-ada-002", "cl100k_base"),
    ("davinci-002", "cl100k_base"),
    ("babbage-002", "cl100k_base"),
)

_ESTIMATE_ENCODING: Final = "o200k_base"
_overrides: dict[str, tuple[str, bool]] = {}
_overrides_lock = threading.Lock()


def _normalise(model: str) -> str:
    name = model.strip().lower()
    # provider routes: "openai/gpt-4o", "azure/gpt-4o", "openrouter/openai/gpt-4o"
    name = name.rsplit("/", 1)[-1]
    # fine-tunes: "ft:gpt-4o-mini-2024-07-18:org:suffix:id" are billed as their base
    if name.startswith("ft:"):
        name = name[3:].split(":", 1)[0]
    return name


def _matches(name: str, prefix: str) -> bool:
    if not name.startswith(prefix):
        return False
    # "claude-" ends at a boundary itself; "gpt-4" must be followed by one
    return len(name) == len(prefix) or not prefix[-1].isalnum() or not name[len(prefix)].isalnum()


@lru_cache(maxsize=1024)
def _tokenizer(model: str) -> _Tokenizer:
    name = _normalise(model)
    found: tuple[str, bool] | None = None
    for prefix, (encoding, exact) in sorted(_overrides.items(), key=lambda kv: -len(kv[0])):
        if _matches(name, prefix):
            found = (encoding, exact)
            break
    if found is None:
        found = next(((enc, True) for prefix, enc in _PREFIXES if _matches(name, prefix)), None)
    encoding, exact = found if found is not None else (_ESTIMATE_ENCODING, False)
    if name.startswith("gpt-3.5-turbo-0301"):
        rules = _GPT35_0301_RULES
    else:
        rules = _O200K_RULES if encoding.startswith("o200k") else _CL100K_RULES
    mini = _matches(name, "gpt-4o-mini")
    return _Tokenizer(
        encoding=encoding,
        exact=exact,
        rules=rules,
        tiles=_GPT4O_MINI_TILES if mini else _GPT4O_TILES,
        # the tile formula is documented for the gpt-4o family; other vision models
        # (patch-based gpt-4.1-mini/nano, o4-mini, gpt-5) are estimated with it
        tiles_exact=exact and (_matches(name, "gpt-4o") or _matches(name, "chatgpt-4o")),
    )


def set_model_encoding(model: str, encoding: str | None, *, exact: bool = False) -> None:
    """Count ``model`` (an id or an id prefix, e.g. ``"claude-"``) with ``encoding``.

    Overrides win over the built-in table; the longest matching prefix wins among them.
    Pass ``encoding=None`` to remove an override. ``exact=True`` claims the encoding is the
    model's real tokenizer, so counts for it are not marked estimated.

    Example:
        ``set_model_encoding("my-finetune", "cl100k_base", exact=True)``
    """
    key = _normalise(model)
    with _overrides_lock:
        if encoding is None:
            _overrides.pop(key, None)
        else:
            _overrides[key] = (encoding, exact)
        _tokenizer.cache_clear()


def encoding_name_for_model(model: str) -> str:
    """Name of the encoding metered counts ``model`` with (``o200k_base`` when unknown)."""
    return _tokenizer(model).encoding


def encoding_for_model(model: str) -> tiktoken.Encoding:
    """The :class:`tiktoken.Encoding` metered counts ``model`` with."""
    return get_encoding(_tokenizer(model).encoding)


def is_exact(model: str) -> bool:
    """Whether ``model``'s own tokenizer is known (``False``: counts are estimates)."""
    return _tokenizer(model).exact


# --------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------

# Without a size, assume the largest image the tile formula can produce (768 x 2048
# after scaling = 8 tiles): an estimate that reserves budget should not undercount.
_UNSIZED_TILES: Final = 8
# Anthropic: tokens ~= width * height / 750 after scaling to <= 1568 px on the long edge
# and about 1.15 megapixels, i.e. at most ~1600 tokens per image.
_ANTHROPIC_MAX_EDGE: Final = 1568
_ANTHROPIC_MAX_PIXELS: Final = 1_150_000
_ANTHROPIC_PIXELS_PER_TOKEN: Final = 750
_ANTHROPIC_UNSIZED_IMAGE: Final = 1600
# Enough base64 to reach a JPEG's frame header past typical EXIF/ICC segments.
_SNIFF_CHARS: Final = 1 << 16


def _be16(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 2], "big")


def _le(data: bytes, at: int, size: int) -> int:
    return int.from_bytes(data[at : at + size], "little")


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    at = 2
    while at + 9 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
            return _be16(data, at + 7), _be16(data, at + 5)
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            at += 2
            continue
        at += 2 + _be16(data, at + 2)
    return None


def _image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, GIF, WebP or JPEG header, or ``None``."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return _le(data, 6, 2), _le(data, 8, 2)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        chunk = data[12:16]
        if chunk == b"VP8 ":
            return _le(data, 26, 2) & 0x3FFF, _le(data, 28, 2) & 0x3FFF
        if chunk == b"VP8L":
            b0, b1, b2, b3 = data[21:25]
            return 1 + (((b1 & 0x3F) << 8) | b0), 1 + (((b3 & 0x0F) << 10) | (b2 << 2) | (b1 >> 6))
        if chunk == b"VP8X":
            return 1 + _le(data, 24, 3), 1 + _le(data, 27, 3)
        return None
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    return None


def _base64_image_size(payload: str) -> tuple[int, int] | None:
    head = payload[:_SNIFF_CHARS]
    head = head[: len(head) - len(head) % 4]
    try:
        return _image_size(binascii.a2b_base64(head))
    except (binascii.Error, ValueError):
        return None


def _data_url_size(url: str) -> tuple[int, int] | None:
    if not url.startswith("data:"):
        return None
    meta, sep, payload = url.partition(",")
    if not sep or not meta.endswith(";base64"):
        return None
    return _base64_image_size(payload)


def _tile_count(width: int, height: int) -> int:
    w, h = float(width), float(height)
    if max(w, h) > 2048:
        scale = 2048 / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > 768:
        scale = 768 / min(w, h)
        w, h = w * scale, h * scale
    return math.ceil(int(w) / 512) * math.ceil(int(h) / 512)


def _anthropic_image_tokens(size: tuple[int, int] | None) -> int:
    if size is None or min(size) <= 0:
        return _ANTHROPIC_UNSIZED_IMAGE
    w, h = size
    scale = min(1.0, _ANTHROPIC_MAX_EDGE / max(w, h), math.sqrt(_ANTHROPIC_MAX_PIXELS / (w * h)))
    return math.ceil(int(w * scale) * int(h * scale) / _ANTHROPIC_PIXELS_PER_TOKEN)


# --------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------

# Tool calls in the history: name + arguments, plus a framing estimate (not published).
_TOOL_CALL_OVERHEAD: Final = 3
# Anthropic adds a hidden tool-use system prompt when tools are given; its pricing docs
# list 346 tokens for Claude 3.5+ / 4 models with tool_choice auto (the largest value).
_ANTHROPIC_TOOL_PROMPT: Final = 346
_FLAT_PROPERTY_KEYS: Final = frozenset({"type", "description", "enum"})
_TEXT_PART_TYPES: Final = frozenset({"text", "input_text", "output_text", "refusal"})
_PLAIN_MESSAGE_KEYS: Final = frozenset({"role", "content", "name"})
_METADATA_KEYS: Final = frozenset({"type", "id", "status", "tool_call_id"})


class ChatCounter:
    """Counts the pieces of one request with one model's rules.

    Each method returns the tokens of one piece; :attr:`exact` turns ``False`` as soon as
    any piece needed an estimate (unknown model, image without size, tool calls, ...).
    :func:`count_chat` and the trimming module use it so that every message is counted
    exactly once.

    Args:
        model: the model id (provider prefixes and ``ft:`` ids are understood).
        shape: ``"openai"`` (Chat Completions / Responses) or ``"anthropic"`` (Messages).
    """

    __slots__ = ("_count", "_tok", "encoding", "exact", "model", "shape")

    def __init__(self, model: str, *, shape: Shape = "openai") -> None:
        self.model = model
        self.shape: Shape = shape
        self._tok = _tokenizer(model)
        self.encoding: str = self._tok.encoding
        self.exact: bool = self._tok.exact and shape == "openai"
        self._count = _get_loaded(self._tok.encoding).cache.count

    @property
    def reply_priming(self) -> int:
        """Tokens the API adds to prime the assistant's reply."""
        return self._tok.rules.reply_priming

    def text(self, text: str) -> int:
        """Tokens of ``text`` as ordinary text."""
        return self._count(text)

    def _json(self, value: Any) -> int:
        if isinstance(value, str):
            return self._count(value)
        try:
            return self._count(json.dumps(value, ensure_ascii=False, separators=(",", ":")))
        except (TypeError, ValueError):
            return 0

    def message(self, message: Mapping[str, Any]) -> int:
        """Tokens of one message or Responses input item, framing included."""
        if type(message) is not dict and not isinstance(message, Mapping):
            raise InvalidRequest(
                f"a message must be an object, got {type(message).__name__}", param="messages"
            )
        if self.shape == "anthropic":
            return self._anthropic_message(message)
        if "role" not in message and "type" in message:
            return self._responses_item(message)
        rules = self._tok.rules
        count = self._count
        n = rules.per_message
        for key, value in message.items():
            if type(value) is str:
                if key in _METADATA_KEYS:
                    # item type, ids, status: not rendered as text for the model
                    if key == "tool_call_id":
                        self.exact = False
                    continue
                n += count(value)
                if key == "name":
                    n += rules.per_name
                elif key not in _PLAIN_MESSAGE_KEYS:
                    self.exact = False
            elif value is None:
                continue
            elif key == "content":
                n += self._parts(value)
            elif key == "tool_calls":
                n += self._tool_calls(value)
            elif key == "function_call":
                n += self._function_call(value)
            else:
                self.exact = False
        return n

    def _tool_calls(self, calls: Any) -> int:
        self.exact = False
        if not isinstance(calls, Sequence):
            return 0
        return sum(
            self._function_call(call.get("function")) for call in calls if isinstance(call, Mapping)
        )

    def _function_call(self, call: Any) -> int:
        self.exact = False
        if not isinstance(call, Mapping):
            return 0
        return (
            _TOOL_CALL_OVERHEAD
            + self._count(str(call.get("name") or ""))
            + self._json(call.get("arguments") or "")
        )

    def _responses_item(self, item: Mapping[str, Any]) -> int:
        kind = item.get("type")
        self.exact = False
        if kind == "function_call":
            return self._function_call(item)
        if kind == "function_call_output":
            return self._tok.rules.per_message + self._json(item.get("output") or "")
        return 0

    def _parts(self, content: Any) -> int:
        if isinstance(content, str):
            return self._count(content)
        if not isinstance(content, Sequence):
            self.exact = False
            return 0
        n = 0
        for part in content:
            if isinstance(part, str):
                n += self._count(part)
                continue
            if not isinstance(part, Mapping):
                self.exact = False
                continue
            kind = part.get("type")
            # parts come from request bodies: a list "type" must not raise from a set lookup
            if type(kind) is str and kind in _TEXT_PART_TYPES:
                n += self._count(str(part.get(kind if kind == "refusal" else "text") or ""))
            elif kind in ("image_url", "input_image"):
                n += self._openai_image(part)
            else:
                # input_audio, file, ...: no published formula
                self.exact = False
        return n

    def _openai_image(self, part: Mapping[str, Any]) -> int:
        image = part.get("image_url")
        if isinstance(image, Mapping):  # chat: {"image_url": {"url": ..., "detail": ...}}
            url, detail = image.get("url"), image.get("detail")
        else:  # responses: {"image_url": "...", "detail": ...}
            url, detail = image, part.get("detail")
        tiles = self._tok.tiles
        if not self._tok.tiles_exact:
            self.exact = False
        if detail == "low":
            return tiles.base
        size = _data_url_size(url) if isinstance(url, str) else None
        if size is None or detail != "high":
            # unknown size, or "auto" (the API picks the detail): assume high
            self.exact = False
        n_tiles = _UNSIZED_TILES if size is None else _tile_count(*size)
        return tiles.base + tiles.tile * n_tiles

    def tools(self, tools: Sequence[Mapping[str, Any]] | None) -> int:
        """Tokens of the tool (or legacy ``functions``) definitions of a request.

        Raises:
            InvalidRequest: ``tools`` is not a list.
        """
        if not tools:
            return 0
        if type(tools) is not list and (
            isinstance(tools, (str, bytes)) or not isinstance(tools, Sequence)
        ):
            # tools come from request bodies: `"tools": true` is a 400, not a TypeError
            raise InvalidRequest("tools must be a list of tool definitions", param="tools")
        if self.shape == "anthropic":
            return _ANTHROPIC_TOOL_PROMPT + sum(
                self._count(str(tool.get("name") or ""))
                + self._count(str(tool.get("description") or ""))
                + self._json(tool.get("input_schema") or {})
                for tool in tools
                if isinstance(tool, Mapping)
            )
        rules = self._tok.rules
        n = 0
        for tool in tools:
            if not isinstance(tool, Mapping):
                self.exact = False
                continue
            function = tool.get("function", tool)
            if tool.get("type", "function") != "function" or not isinstance(function, Mapping):
                # built-in tools (web_search, file_search, ...) have no published count
                self.exact = False
                continue
            n += rules.func_init
            description = function.get("description")
            if not isinstance(description, str):
                self.exact = False
                description = ""
            n += self._count(f"{function.get('name', '')}:{description.removesuffix('.')}")
            parameters = function.get("parameters")
            properties = parameters.get("properties") if isinstance(parameters, Mapping) else None
            if isinstance(properties, Mapping) and properties:  # a list here is not a schema
                n += rules.prop_init + self._properties(properties)
        return n + rules.func_end

    def _properties(self, properties: Mapping[str, Any]) -> int:
        rules = self._tok.rules
        n = 0
        for key, spec in properties.items():
            n += rules.prop_key
            if not isinstance(spec, Mapping):
                self.exact = False
                continue
            if not spec.keys() <= _FLAT_PROPERTY_KEYS:
                # nested objects, arrays, anyOf ...: beyond the cookbook's formula; nested
                # properties are counted with the same per-property rule
                self.exact = False
            kind = spec.get("type", "")
            if not isinstance(kind, str):
                kind = " | ".join(map(str, kind)) if isinstance(kind, Sequence) else ""
            enum = spec.get("enum")
            if isinstance(enum, Sequence) and not isinstance(enum, str):
                n += rules.enum_init
                n += sum(rules.enum_item + self._count(str(item)) for item in enum)
            description = spec.get("description")
            description = description if isinstance(description, str) else ""
            n += self._count(f"{key}:{kind}:{description.removesuffix('.')}")
            for nested in (spec, spec.get("items")):
                inner = nested.get("properties") if isinstance(nested, Mapping) else None
                if isinstance(inner, Mapping) and inner:
                    n += rules.prop_init + self._properties(inner)
        return n

    # -- Anthropic ---------------------------------------------------------------------

    def system(self, system: Any) -> int:
        """Tokens of an Anthropic top-level ``system`` (string or text blocks)."""
        if not system:
            return 0
        return self._tok.rules.per_message + self._blocks(system)

    def _anthropic_message(self, message: Mapping[str, Any]) -> int:
        role = message.get("role")
        n = self._tok.rules.per_message + (self._count(role) if isinstance(role, str) else 0)
        return n + self._blocks(message.get("content"))

    def _blocks(self, content: Any) -> int:
        if isinstance(content, str):
            return self._count(content)
        if not isinstance(content, Sequence):
            return 0
        n = 0
        for block in content:
            if not isinstance(block, Mapping):
                continue
            kind = block.get("type")
            if kind == "text":
                n += self._count(str(block.get("text") or ""))
            elif kind == "image":
                n += _anthropic_image_tokens(self._anthropic_image_size(block.get("source")))
            elif kind == "tool_use":
                n += self._function_call(
                    {"name": block.get("name"), "arguments": block.get("input") or {}}
                )
            elif kind == "tool_result":
                n += _TOOL_CALL_OVERHEAD + self._blocks(block.get("content"))
            elif kind == "thinking":
                n += self._count(str(block.get("thinking") or ""))
            elif kind == "document":
                source = block.get("source")
                if isinstance(source, Mapping) and source.get("type") == "text":
                    n += self._count(str(source.get("data") or ""))
                elif isinstance(source, Mapping) and source.get("type") == "content":
                    n += self._blocks(source.get("content"))
        return n

    @staticmethod
    def _anthropic_image_size(source: Any) -> tuple[int, int] | None:
        if isinstance(source, Mapping) and source.get("type") == "base64":
            data = source.get("data")
            return _base64_image_size(data) if isinstance(data, str) else None
        return None

    # -- totals ------------------------------------------------------------------------

    def total(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        system: Any = None,
    ) -> int:
        """Prompt tokens of a whole request: messages, tools, system and reply priming."""
        if type(messages) is not list and (
            isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence)
        ):
            raise InvalidRequest("messages must be a list of message objects", param="messages")
        message = self.message
        n = self._tok.rules.reply_priming
        if tools:
            n += self.tools(tools)
        if system:
            n += self.system(system)
        for m in messages:
            n += message(m)
        return n


def count_text(text: str, *, model: str) -> int:
    """Tokens of ``text`` as ordinary text (no chat framing) for ``model``'s encoding."""
    return _get_loaded(_tokenizer(model).encoding).cache.count(text)


def count_chat(
    messages: Sequence[Mapping[str, Any]],
    *,
    model: str,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> int:
    """Prompt tokens of an OpenAI chat request, as the API bills them.

    Args:
        messages: the ``messages`` list (dicts; content as a string or parts).
        model: the model id.
        tools: the ``tools`` (or legacy ``functions``) definitions, if any.

    Example:
        The cookbook's 6-message ``example_messages`` count 129 on gpt-4 and 124 on
        gpt-4o, the numbers the API reported.
    """
    return ChatCounter(model).total(messages, tools=tools)


def count_anthropic(
    messages: Sequence[Mapping[str, Any]],
    *,
    model: str,
    system: Any = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> int:
    """Estimated input tokens of an Anthropic Messages request (no public tokenizer)."""
    return ChatCounter(model, shape="anthropic").total(messages, tools=tools, system=system)


@dataclass(frozen=True, slots=True)
class TokenCount:
    """A count and how far to trust it.

    Attributes:
        tokens: the number of tokens.
        encoding: the encoding used (``o200k_base``, ``cl100k_base``, ...).
        exact: ``False`` when the model's tokenizer is not public or a part of the request
            was estimated (images without a size, tool calls, unknown part types).
    """

    tokens: int
    encoding: str
    exact: bool


_ANTHROPIC_BLOCKS: Final = frozenset({"tool_use", "tool_result", "document", "thinking"})


def _is_anthropic(body: Mapping[str, Any]) -> bool:
    if "system" in body:
        return True
    tools = body.get("tools")
    if isinstance(tools, Sequence) and any(
        isinstance(t, Mapping) and "input_schema" in t for t in tools
    ):
        return True
    messages = body.get("messages")
    if not isinstance(messages, Sequence) or isinstance(messages, str):
        return False  # not messages at all: counting them refuses the body
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, list):
            for block in content:
                kind = block.get("type") if isinstance(block, Mapping) else None
                # a list "type" from a request body must not raise from a set lookup
                if type(kind) is str and (
                    kind in _ANTHROPIC_BLOCKS or (kind == "image" and "source" in block)
                ):
                    return True
    return False


def count_request(body_or_text: Any, *, model: str, chat: bool = True) -> TokenCount:
    """Count a request body, a message list or a plain text.

    * ``str``: the text alone (``chat=False``) or as one user message (``chat=True``).
    * ``list``: OpenAI chat ``messages``.
    * ``Mapping``: a Chat Completions body (``messages``, ``tools``/``functions``), an
      Anthropic Messages body (``system``, ``input_schema`` tools or Anthropic blocks), a
      Responses body (``instructions``, ``input``) or a legacy ``prompt``.

    Raises:
        InvalidRequest: nothing countable was found.
    """
    if isinstance(body_or_text, str):
        if not chat:
            return TokenCount(
                count_text(body_or_text, model=model),
                encoding_name_for_model(model),
                is_exact(model),
            )
        body_or_text = [{"role": "user", "content": body_or_text}]
    if isinstance(body_or_text, Sequence) and not isinstance(body_or_text, (str, bytes)):
        body_or_text = {"messages": body_or_text}
    if not isinstance(body_or_text, Mapping):
        raise InvalidRequest(
            f"cannot count a {type(body_or_text).__name__}: pass text, messages or a body"
        )
    body = body_or_text
    counter: ChatCounter
    if "messages" in body:
        shape: Shape = "anthropic" if _is_anthropic(body) else "openai"
        counter = ChatCounter(model, shape=shape)
        tools = body.get("tools") or body.get("functions")
        tokens = counter.total(body["messages"], tools=tools, system=body.get("system"))
    elif "input" in body:
        counter = ChatCounter(model)
        items = body["input"]
        if isinstance(items, str):
            items = [{"role": "user", "content": items}]
        elif not isinstance(items, Sequence) or isinstance(items, bytes):
            # input comes from request bodies: null or 5 is a 400, not a TypeError
            raise InvalidRequest("input must be a string or a list of items", param="input")
        instructions = body.get("instructions")
        if instructions:
            items = [{"role": "system", "content": instructions}, *items]
        tokens = counter.total(items, tools=body.get("tools"))
    elif isinstance(body.get("prompt"), str):
        return count_request(body["prompt"], model=model, chat=False)
    else:
        raise InvalidRequest("the body has no messages, input or prompt to count", param="messages")
    return TokenCount(tokens, counter.encoding, counter.exact)


def estimate_usage(
    body: Mapping[str, Any],
    *,
    model: str | None = None,
    default_output_tokens: int | None = None,
) -> Usage:
    """Pre-call estimate: the counted prompt plus the most the call may output.

    The output side is the request's own limit (``max_completion_tokens``,
    ``max_output_tokens`` or ``max_tokens``), else ``default_output_tokens`` (pass the
    model's maximum output to reserve the worst case), else 0.

    Args:
        body: the request body.
        model: the model to count for; defaults to ``body["model"]``.
        default_output_tokens: the output cap to assume when the request sets none.

    Raises:
        InvalidRequest: no model, or an invalid output limit.
    """
    # policy owns the parameter names; imported here so policy may import tokens freely
    from metered.fitting.policy import requested_output_limit

    name = model if model is not None else body.get("model")
    if not isinstance(name, str) or not name:
        raise InvalidRequest("the request names no model", param="model")
    prompt = count_request(body, model=name)
    output = requested_output_limit(body)
    if output is None:
        output = default_output_tokens or 0
    return Usage(input_tokens=prompt.tokens, output_tokens=output, source="estimated")

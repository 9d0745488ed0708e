"""Encodings: the bundled BPE files, the model -> encoding table and cached text counts.

``o200k_base`` and ``cl100k_base`` ship inside the package (``metered/_data``,
gzip-compressed copies of OpenAI's ``.tiktoken`` rank files, see ``_data/NOTICE``). They
are loaded on first use, checked against tiktoken's published sha256 and turned into a
:class:`tiktoken.Encoding` directly: no network, no environment variables, no writes to
tiktoken's cache, nothing registered in tiktoken's global registry. Any other encoding
name falls back to :func:`tiktoken.get_encoding` (which may download).

A text's count is ``len(enc.encode_ordinary(text))``, which tiktoken documents as equal
to ``enc.encode(text, disallowed_special=())``: special-token text such as
``<|endoftext|>`` in user content counts as ordinary text, the way the API treats it.
Per-text counts are memoised in a cache bounded by total characters that keeps the texts
used recently, so re-counting a conversation that grows by one message per turn costs
only the new message.

Models without a public tokenizer (Claude, Gemini, Llama, Mistral, unknown ids) are
counted with ``o200k_base`` and marked estimated; :func:`set_model_encoding` overrides
the choice per model id or prefix.
"""

from __future__ import annotations

import binascii
import gzip
import hashlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from importlib import resources
from typing import TYPE_CHECKING, Final

from metered.errors import MeteredError
from metered.tokens.images import GPT4O_MINI_TILES, GPT4O_TILES, Tiles

if TYPE_CHECKING:
    import tiktoken

__all__ = [
    "ESTIMATE_HEADROOM",
    "ChatRules",
    "Tokenizer",
    "count_text",
    "encoding_for_model",
    "encoding_name_for_model",
    "get_encoding",
    "is_exact",
    "set_model_encoding",
    "text_counter",
    "tokenizer",
]

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
    """Token count per text, bounded by characters; recently used texts survive eviction.

    Two generations of plain dicts, each holding at most half the budget: a new text, or
    one found in the old generation, goes into the young one; when the young one is full
    it becomes the old one and the previous old one is dropped. A hit is a plain dict
    read, which is safe without the lock on every CPython build (free-threaded ones
    included), unlike reordering an OrderedDict; everything that writes takes the lock.
    """

    __slots__ = ("_chars", "_encode", "_lock", "_old", "_young")

    def __init__(self, encoding: tiktoken.Encoding) -> None:
        self._encode = encoding.encode_ordinary
        self._young: dict[str, int] = {}
        self._old: dict[str, int] = {}
        self._chars = 0  # characters of the texts in _young
        self._lock = threading.Lock()

    def count(self, text: str) -> int:
        """Tokens of ``text``, from the cache when it was counted recently."""
        if type(text) is not str:
            # key by the text itself: a str subclass may hash differently (a StrEnum
            # member hashes its name) and run Python code inside the dict operations
            text = str.__str__(text)
        n = self._young.get(text)
        if n is not None:
            return n
        n = self._old.get(text)
        if n is None:
            # Encode outside the lock: two threads may count the same text once each,
            # which is cheaper than serialising every encode.
            n = len(self._encode(text))
        if len(text) <= _CACHE_MAX_ENTRY_CHARS:
            self._keep(text, n)
        return n

    def _keep(self, text: str, n: int) -> None:
        size = len(text)
        with self._lock:
            if text in self._young:
                return
            if self._chars + size > _CACHE_MAX_CHARS // 2:
                self._old, self._young, self._chars = self._young, {}, 0
            self._young[text] = n
            self._chars += size

    def clear(self) -> None:
        """Forget every cached count."""
        with self._lock:
            self._old, self._young, self._chars = {}, {}, 0


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
    # The verified file is "<base64 token> <rank>" lines: split() on the whole buffer and
    # pair the halves (strict, so a truncated file fails instead of losing a token).
    fields = raw.split()
    a2b = binascii.a2b_base64
    return dict(zip(map(a2b, fields[0::2]), map(int, fields[1::2]), strict=True))


def _build(name: str) -> tiktoken.Encoding:
    # deferred: `import metered` stays light; only code that counts pays for tiktoken
    import tiktoken

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
class ChatRules:
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


_O200K_RULES: Final = ChatRules(per_message=3, per_name=1, reply_priming=3, func_init=7)
_CL100K_RULES: Final = ChatRules(per_message=3, per_name=1, reply_priming=3, func_init=10)
_GPT35_0301_RULES: Final = ChatRules(per_message=4, per_name=-1, reply_priming=3, func_init=10)


@dataclass(frozen=True, slots=True)
class Tokenizer:
    """How one model is counted.

    Attributes:
        encoding: the encoding name.
        exact: whether the encoding is the model's real tokenizer.
        rules: the chat framing overheads.
        tiles: the image tile formula.
        tiles_exact: whether the tile formula is documented for the model.
        headroom: how many tokens the model's own tokenizer may count per token of the
            estimate: a budget holds the prompt at this many times its count (1 when
            the encoding is the model's own).
    """

    encoding: str
    exact: bool
    rules: ChatRules
    tiles: Tiles
    tiles_exact: bool
    headroom: Fraction = Fraction(1)


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
#: The headroom of a count made with an encoding that is not the model's own. Published
#: comparisons put Claude's tokenizer at 16-30% more tokens than gpt-4o's on the same
#: text (more on code than on prose); other families differ less.
ESTIMATE_HEADROOM: Final = Fraction(13, 10)
# Models on Anthropic's newer tokenizer: "approximately 30 percent more tokens than on
# earlier models" for the same text (Anthropic's token-counting docs), on top of the
# earlier models' own headroom.
_NEWER_CLAUDE_HEADROOM: Final = Fraction(17, 10)
_NEWER_CLAUDE: Final = (
    "claude-opus-4-7", "claude-opus-4-8", "claude-opus-5", "claude-sonnet-5", "claude-fable",
    "claude-mythos",
)  # fmt: skip
# Model ids come from request bodies: bound the per-id cache.
_TOKENIZER_CACHE_LIMIT: Final = 1024
_overrides: dict[str, tuple[str, bool, Fraction | None]] = {}
_tokenizers: dict[str, Tokenizer] = {}
# Guards _overrides and _tokenizers together, so a lookup computed from the old
# overrides can never be cached after set_model_encoding cleared the cache.
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


def tokenizer(model: str) -> Tokenizer:
    """How ``model`` is counted (cached per id; overrides first, then the built-in table)."""
    found = _tokenizers.get(model)
    if found is not None:
        return found
    with _overrides_lock:
        found = _tokenizers.get(model)
        if found is None:
            if len(_tokenizers) >= _TOKENIZER_CACHE_LIMIT:
                _tokenizers.clear()
            found = _tokenizers[model] = _lookup(model)
    return found


def _lookup(model: str) -> Tokenizer:
    name = _normalise(model)
    found: tuple[str, bool, Fraction | None] | None = None
    for prefix, override in sorted(_overrides.items(), key=lambda kv: -len(kv[0])):
        if _matches(name, prefix):
            found = override
            break
    if found is None:
        found = next(
            ((enc, True, None) for prefix, enc in _PREFIXES if _matches(name, prefix)), None
        )
    encoding, exact, headroom = found if found is not None else (_ESTIMATE_ENCODING, False, None)
    if headroom is None:
        headroom = _headroom(name) if not exact else Fraction(1)
    if name.startswith("gpt-3.5-turbo-0301"):
        rules = _GPT35_0301_RULES
    else:
        rules = _O200K_RULES if encoding.startswith("o200k") else _CL100K_RULES
    mini = _matches(name, "gpt-4o-mini")
    return Tokenizer(
        encoding=encoding,
        exact=exact,
        rules=rules,
        tiles=GPT4O_MINI_TILES if mini else GPT4O_TILES,
        # the tile formula is documented for the gpt-4o family; other vision models
        # (patch-based gpt-4.1-mini/nano, o4-mini, gpt-5) are estimated with it
        tiles_exact=exact and (_matches(name, "gpt-4o") or _matches(name, "chatgpt-4o")),
        headroom=headroom,
    )


def _headroom(name: str) -> Fraction:
    # Bedrock and Vertex spell Claude ids with a vendor prefix or a version suffix
    name = name.split("anthropic.", 1)[-1]
    if any(_matches(name, prefix) for prefix in _NEWER_CLAUDE):
        return _NEWER_CLAUDE_HEADROOM
    return ESTIMATE_HEADROOM


def set_model_encoding(
    model: str,
    encoding: str | None,
    *,
    exact: bool = False,
    headroom: Fraction | int | str | None = None,
) -> None:
    """Count ``model`` (an id or an id prefix, e.g. ``"claude-"``) with ``encoding``.

    Overrides win over the built-in table; the longest matching prefix wins among them.
    Pass ``encoding=None`` to remove an override. ``exact=True`` claims the encoding is the
    model's real tokenizer, so counts for it are not marked estimated. ``headroom`` (at
    least 1, e.g. ``"1.5"``) is how many tokens the model may count per counted one: a
    budget holds the prompt at that many times its count. Default: 1 when exact, else
    :data:`ESTIMATE_HEADROOM` (more for Claude models on Anthropic's newer tokenizer).

    Example:
        ``set_model_encoding("my-finetune", "cl100k_base", exact=True)``
    """
    key = _normalise(model)
    ratio = None if headroom is None else Fraction(headroom)
    if ratio is not None and ratio < 1:
        raise ValueError(f"headroom must be at least 1, got {headroom!r}")
    with _overrides_lock:
        if encoding is None:
            _overrides.pop(key, None)
        else:
            _overrides[key] = (encoding, exact, ratio)
        _tokenizers.clear()


def encoding_name_for_model(model: str) -> str:
    """Name of the encoding metered counts ``model`` with (``o200k_base`` when unknown)."""
    return tokenizer(model).encoding


def encoding_for_model(model: str) -> tiktoken.Encoding:
    """The :class:`tiktoken.Encoding` metered counts ``model`` with."""
    return get_encoding(tokenizer(model).encoding)


def is_exact(model: str) -> bool:
    """Whether ``model``'s own tokenizer is known (``False``: counts are estimates)."""
    return tokenizer(model).exact


def text_counter(encoding: str) -> Callable[[str], int]:
    """The cached ``text -> tokens`` function of an encoding (loads it on first use)."""
    return _get_loaded(encoding).cache.count


def count_text(text: str, *, model: str) -> int:
    """Tokens of ``text`` as ordinary text (no chat framing) for ``model``'s encoding."""
    return _get_loaded(tokenizer(model).encoding).cache.count(text)

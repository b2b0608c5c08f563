"""SegVol's text prompts as CLIP token ids, offline: the same ids and padding as SegVol's tokenizer.

SegVol (``network/model.py`` ``TextEncoder.organ2tokens``) wraps each name in
``"A computerized tomography of a {name}."`` and tokenises the batch with the CLIP tokenizer of its
``config/clip`` (HF fast tokenizer, ``padding=True``: padded to the longest with ``<|endoftext|>``, attention
mask 0 there). The vocabulary is CLIP's byte-level BPE (``bpe_simple_vocab_16e6.txt.gz``), which this project
does not ship: it is read from the ``open-clip-torch`` package (MIT licence, the ``text`` extra; only its data
file is used, the package is never imported), or from tokenizer files the user passes (a ``tokenizer.json`` or a
directory holding one, e.g. SegVol's ``config/clip``).

The pipeline around the BPE is CLIP's, as in SegVol's ``tokenizer.json``: NFC, whitespace runs to one space,
lower case; CLIP's word regex; byte-level encoding; ``<|startoftext|>`` ... ``<|endoftext|>``.
"""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

SENTENCE = "A computerized tomography of a {}."  # SegVol's template (network/model.py:214)
START, END = "<|startoftext|>", "<|endoftext|>"
START_ID, END_ID = 49406, 49407
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
MERGES = 49152 - 256 - 2  # CLIP uses the first 48,894 merges of the file (after its header line)
MAX_TOKENS = 77  # CLIP's context
MAX_NAME_CHARS = 200


@dataclass(frozen=True)
class TextTokens:
    """(B, L) int64 ids and attention mask, ready for ``SegVol.embed_text``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor


def packaged_vocabulary() -> Path:
    """CLIP's BPE vocabulary as ``open-clip-torch`` ships it, found without importing the package."""
    spec = importlib.util.find_spec("open_clip")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        path = Path(folder) / VOCAB_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"text: CLIP's vocabulary ({VOCAB_FILE}) was not found: install the 'text' extra "
        "(pip install 'segvol-interactive[text]') or pass the tokenizer files (text_tokenizer=PATH)"
    )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's reversible map of the 256 bytes to printable characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def vocabulary_from_bpe(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's token -> id table and merge list from ``bpe_simple_vocab_16e6.txt.gz``.

    Ids in CLIP's order: the 256 byte characters, the same with ``</w>``, one token per merge, then the two
    special tokens (49406, 49407).
    """
    lines = gzip.open(path, "rt", encoding="utf-8").read().split("\n")[1 : MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + [START, END]
    return {t: i for i, t in enumerate(tokens)}, merges  # type: ignore[return-value]


def _build(path: Path):  # noqa: ANN202 - a tokenizers.Tokenizer
    try:
        from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("text: tokenising needs the 'tokenizers' package (the 'text' extra)") from exc
    if path.is_dir():
        path = path / "tokenizer.json"
    if path.name.endswith(".json"):
        if not path.is_file():
            raise FileNotFoundError(f"text_tokenizer: no tokenizer.json at {path}")
        return Tokenizer.from_file(str(path))
    vocab, merges = vocabulary_from_bpe(path)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=END, end_of_word_suffix="</w>",
                               continuing_subword_prefix="", fuse_unk=False))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    words = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(words), behavior="removed", invert=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.post_processor = processors.RobertaProcessing((END, END_ID), (START, START_ID),
                                                      trim_offsets=False, add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([START, END])
    return tok


@lru_cache(maxsize=4)
def _tokenizer(path: str):  # noqa: ANN202
    return _build(Path(path))


def validate_name(name: object, field: str = "text") -> str:
    """A prompt name: a non-empty string of at most 200 characters, surrounding blanks removed."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{field}: expected a non-empty object name such as 'liver', got {name!r}")
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"{field}: at most {MAX_NAME_CHARS} characters, got {len(name)}")
    return name.strip()


def tokenize(names: list[str], tokenizer_path: str | Path | None = None) -> TextTokens:
    """SegVol's tokens for object names: each wrapped in SegVol's sentence, padded to the longest."""
    clean = [validate_name(n) for n in names]
    tok = _tokenizer(str(tokenizer_path if tokenizer_path is not None else packaged_vocabulary()))
    ids = [tok.encode(SENTENCE.format(n)).ids for n in clean]
    longest = max(len(i) for i in ids)
    if longest > MAX_TOKENS:
        raise ValueError(f"text: the prompt sentence is {longest} tokens, CLIP takes at most {MAX_TOKENS}")
    input_ids = torch.full((len(ids), longest), END_ID, dtype=torch.long)
    mask = torch.zeros((len(ids), longest), dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return TextTokens(input_ids, mask)

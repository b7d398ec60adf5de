"""Context lookup drafts: continue the current suffix the way the same n-gram continued before.

Prompt lookup (Saxena's "prompt lookup decoding", the n-gram drafting of Lookahead/REST
without their pools) costs no model compute: when the last n tokens of a row (prompt plus
what it generated, root included) occurred earlier in that row, the tokens that followed them
then are a likely continuation now. Summaries, answers over a retrieved passage and
translations copy spans of the prompt, and small models repeat their own phrases, so these
chains are often long. The engine grafts one such chain per row onto the heads' tree as an
extra branch; the verification walk keeps whichever branch the target agrees with furthest,
so a lookup draft can only add accepted tokens, never change the output.

Incremental: each appended token registers the n-grams that end just before it (so an entry
always has a continuation) in per-n dicts of latest occurrence; a query is O(max_ngram).
"""

from __future__ import annotations

from collections.abc import Iterable


class NgramLookup:
    """One row's n-gram index over its tokens; `propose` drafts from the longest match."""

    def __init__(self, tokens: Iterable[int] = (), *, min_ngram: int = 2, max_ngram: int = 4):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError("need 1 <= min_ngram <= max_ngram")
        self.min_ngram = min_ngram
        self.max_ngram = max_ngram
        self.tokens: list[int] = []
        self._latest: dict[int, dict[tuple[int, ...], int]] = {
            n: {} for n in range(min_ngram, max_ngram + 1)
        }
        self.extend(tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def extend(self, tokens: Iterable[int]) -> None:
        """Append tokens; the n-grams ending before each new token become searchable."""
        seq = self.tokens
        for token in tokens:
            end = len(seq)  # the n-gram seq[end - n : end] continues with `token`
            for n, latest in self._latest.items():
                if end >= n:
                    latest[tuple(seq[end - n : end])] = end - n
            seq.append(int(token))

    def propose(self, length: int) -> list[int]:
        """Up to `length` tokens that followed the latest earlier occurrence of the longest
        suffix n-gram (max_ngram down to min_ngram); [] when no suffix occurred before."""
        seq = self.tokens
        for n in range(self.max_ngram, self.min_ngram - 1, -1):
            if len(seq) <= n:
                continue
            start = self._latest[n].get(tuple(seq[-n:]))
            if start is not None:
                return seq[start + n : start + n + length]
        return []

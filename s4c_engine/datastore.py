"""Answer datastore drafts: continue the current suffix the way the target's own answers did.

Context lookup (`s4c_engine.lookup`) only finds what this request already said. A small model
also repeats itself *across* requests: answer openers, list scaffolding, markdown, stock
phrases. REST (He et al., 2023) drafts from a datastore of text by suffix match; here the
datastore is built from the target's own greedy answers to the training prompts (the
self-distilled answers the heads learn from, never Spec-Bench), so a match is what this target
tends to say next, not what some corpus says.

Built once, offline: for every n-gram (min_ngram..max_ngram tokens) seen at least `min_count`
times in the answers (the chat template's last tokens lead each answer, so answer openers are
keyed too), the most frequent continuation, extended token by token while the chosen
continuation keeps at least `min_share` of the n-gram's occurrences and `min_count` of them.
So a chain is the target's modal continuation, cut where the answers stop agreeing.
Drafting is a dict lookup, longest n-gram first: no model compute. A datastore chain is one
more draft branch, merged into the tree beside the heads' nodes and the context chain
(`drafting.merge_chains`): the verification walk accepts it only where the target agrees,
so it can add accepted tokens, never change the output.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from s4c_engine.errors import HeadsMismatchError

CONFIG_FILE = "datastore.json"
TABLES_FILE = "datastore.npz"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class DatastoreConfig:
    """How a datastore was built, and for which target (checked on load)."""

    target_name: str
    vocab_size: int
    min_ngram: int = 2
    max_ngram: int = 4
    max_chain: int = 8
    min_count: int = 2
    min_share: float = 0.3
    sequences: int = 0  # answers it was built from
    tokens: int = 0  # answer tokens it was built from
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise ValueError("need 1 <= min_ngram <= max_ngram")
        if self.max_chain < 1 or self.min_count < 1 or not 0 < self.min_share <= 1:
            raise ValueError("need max_chain >= 1, min_count >= 1 and 0 < min_share <= 1")


class AnswerDatastore:
    """n-gram -> modal continuation tables, one per n; `propose` drafts from the longest."""

    def __init__(
        self, config: DatastoreConfig, tables: dict[int, dict[tuple[int, ...], tuple[int, ...]]]
    ) -> None:
        self.config = config
        self.tables = {n: tables.get(n, {}) for n in range(config.min_ngram, config.max_ngram + 1)}

    def __len__(self) -> int:
        return sum(len(t) for t in self.tables.values())

    def propose(self, tokens: Sequence[int], length: int) -> list[int]:
        """Up to `length` tokens continuing `tokens` (the row so far, root included), from
        the longest suffix n-gram the datastore knows; [] when it knows none."""
        for n in range(self.config.max_ngram, self.config.min_ngram - 1, -1):
            if len(tokens) < n:
                continue
            chain = self.tables[n].get(tuple(tokens[-n:]))
            if chain is not None:
                return list(chain[:length])
        return []

    # ---- building -------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        sequences: Iterable[Sequence[int]],
        *,
        target_name: str,
        vocab_size: int,
        min_ngram: int = 2,
        max_ngram: int = 4,
        max_chain: int = 8,
        min_count: int = 2,
        min_share: float = 0.3,
        lead: Sequence[Sequence[int]] | None = None,
    ) -> AnswerDatastore:
        """Build from answers (token ids). lead[i]: tokens before answer i (the prompt's last
        tokens, e.g. the chat template's assistant header); they key the answer's first
        tokens but are never drafted themselves."""
        seqs = [list(map(int, s)) for s in sequences]
        leads = [list(map(int, x)) for x in lead] if lead is not None else [[] for _ in seqs]
        if len(leads) != len(seqs):
            raise ValueError("lead must have one entry per sequence")
        config = DatastoreConfig(
            target_name=target_name,
            vocab_size=vocab_size,
            min_ngram=min_ngram,
            max_ngram=max_ngram,
            max_chain=max_chain,
            min_count=min_count,
            min_share=min_share,
            sequences=len(seqs),
            tokens=sum(len(s) for s in seqs),
        )
        if any(t < 0 or t >= vocab_size for s in seqs for t in s):
            raise ValueError("token id outside the vocabulary")
        tables = {
            n: _modal_chains(leads, seqs, n, max_chain, min_count, min_share)
            for n in range(min_ngram, max_ngram + 1)
        }
        return cls(config, tables)

    # ---- files ----------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write datastore.json and datastore.npz (per n: keys (K, n), chains (K, L) padded
        with -1)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {}
        width = self.config.max_chain
        for n, table in self.tables.items():
            keys = np.array(list(table.keys()), dtype=np.int32).reshape(len(table), n)
            chains = np.full((len(table), width), -1, dtype=np.int32)
            for i, chain in enumerate(table.values()):
                chains[i, : len(chain)] = chain
            arrays[f"keys{n}"], arrays[f"chains{n}"] = keys, chains
        np.savez_compressed(path / TABLES_FILE, **arrays)  # type: ignore[arg-type]
        (path / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path, target_name: str, vocab_size: int) -> AnswerDatastore:
        """Load what `save` wrote; HeadsMismatchError if it was built for another target."""
        path = Path(path)
        raw = json.loads((path / CONFIG_FILE).read_text())
        if raw.get("format_version") != FORMAT_VERSION:
            raise HeadsMismatchError(
                f"{path}: unsupported datastore format {raw.get('format_version')}"
            )
        config = DatastoreConfig(**raw)
        if (config.target_name, config.vocab_size) != (target_name, vocab_size):
            raise HeadsMismatchError(
                f"{path}: datastore built for {config.target_name!r} (vocab "
                f"{config.vocab_size}), not {target_name!r} (vocab {vocab_size})"
            )
        tables: dict[int, dict[tuple[int, ...], tuple[int, ...]]] = {}
        with np.load(path / TABLES_FILE) as data:
            for n in range(config.min_ngram, config.max_ngram + 1):
                keys, chains = data[f"keys{n}"].tolist(), data[f"chains{n}"].tolist()
                tables[n] = {tuple(k): tuple(t for t in c if t >= 0) for k, c in zip(keys, chains)}
        return cls(config, tables)


def _modal_chains(
    leads: list[list[int]],
    seqs: list[list[int]],
    n: int,
    max_chain: int,
    min_count: int,
    min_share: float,
) -> dict[tuple[int, ...], tuple[int, ...]]:
    """For each n-gram with at least min_count occurrences followed by an answer token, its
    modal continuation (see the module docstring). Windows never cross answers."""
    windows = []
    for lead, seq in zip(leads, seqs):
        full = lead[-n:] + seq if lead else seq
        first = len(full) - len(seq)  # continuations start at answer tokens only
        padded = np.array(full + [-1] * max_chain, dtype=np.int64)
        if len(full) <= n - 1 or len(seq) == 0:
            continue
        view = np.lib.stride_tricks.sliding_window_view(padded, n + max_chain)
        starts = np.arange(max(0, first - n), len(full) - n)
        if len(starts):
            windows.append(view[starts])
    if not windows:
        return {}
    rows = np.concatenate(windows)  # (M, n + L): key then continuation, -1 past the end
    rows = rows[np.lexsort(rows.T[::-1])]
    keys = rows[:, :n]
    change = np.ones(len(rows), dtype=bool)
    change[1:] = (keys[1:] != keys[:-1]).any(1)
    bounds = np.append(np.nonzero(change)[0], len(rows))
    table: dict[tuple[int, ...], tuple[int, ...]] = {}
    for lo, hi in itertools.pairwise(bounds):
        total = hi - lo
        if total < min_count:
            continue
        rest = rows[lo:hi, n:]
        chain: list[int] = []
        for j in range(max_chain):
            col = rest[:, j]
            values, counts = np.unique(col[col >= 0], return_counts=True)
            if not len(values):
                break
            best = int(np.argmax(counts))
            if counts[best] < min_count or counts[best] < min_share * total:
                break
            chain.append(int(values[best]))
            rest = rest[col == values[best]]
        if chain:
            table[tuple(int(t) for t in keys[lo])] = tuple(chain)
    return table

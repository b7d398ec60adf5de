"""The decode loop on token ids: prefill, then propose -> verify -> accept -> commit_path.

Plain decoding is the same loop with a one-node tree (the root only), so both methods share
the cache, masks, sampling and stopping code and can be compared on equal terms.

Continuous verification tree: every step runs exactly one target forward, over the root (the
token committed last step, not yet in the KV cache) plus the draft tree. That forward both
verifies the draft and computes the root's K/V, so verification never needs a separate
"catch-up" pass; the accepted path's K/V are compacted into place (`commit_path`) and the
walk's final node yields the next root (the bonus token).

Feature reuse: the same forward returns the last-layer hidden state at every node. The hidden
state at the node where the walk ended is h_t for the next step, so the draft heads start the
next tree from it directly: no extra target forward per step.

Why this shape: the root has to enter the KV cache anyway, so verifying the tree in the same
forward makes verification "continuous" with decoding (one forward per step, as in plain
decoding), and the hidden states the target already computed are the best draft input there
is (the heads are trained on exactly these features). The unverified subtree below the
accepted node is not carried over: the next tree is drafted fresh from the new h_t.

Two draft sources share each tree: the heads' nodes (sequentially dependent, and only those
the heads give at least `TreeShape.min_prob`), and one context-lookup chain per row from
`s4c_engine.lookup` (what followed the row's current suffix earlier in its prompt or its own
output). The walk keeps the deepest node the target agrees with, whichever source drafted it.

Finished rows leave the batch at once (cache rows, hidden states and roots are compacted), so
they stop costing work, and waiting requests take their place. The tree is re-chosen every
step from the live batch size (`TreeTuner`: the policy's largest tree for that size, smaller
ones, or plain decoding, whichever measures the most tokens/s).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from s4c_engine.attention import build_step_mask, causal_block, right_pad
from s4c_engine.config import FinishReason, RequestStats, SamplingParams
from s4c_engine.context_memory import RowContext, batch_context
from s4c_engine.datastore import AnswerDatastore
from s4c_engine.drafting import TreeShape, propose
from s4c_engine.heads import DraftHeads
from s4c_engine.kv_cache import RowKVCache, fill_holes
from s4c_engine.lookup import NgramLookup
from s4c_engine.sampling import PositionUniforms, choose_tokens
from s4c_engine.stopping import Decode, StopRule, extend_until_stop
from s4c_engine.target import Target
from s4c_engine.tree import StaticTree, TreeBuffers, compile_tree
from s4c_engine.tree_policy import PLAIN, PLAIN_POLICY, TreePolicy, TreeTuner
from s4c_engine.verification import Acceptance, accept, verify

PREFILL_TOKENS = 4096  # padded tokens per prefill forward: bounds memory and padding waste


class PositionObserver(Protocol):
    """Sees the target's features at every position a request commits, as decoding goes
    (what self-distillation records). Position j of a request is token j of prompt + output;
    its features and logits predict token j + 1. `feature_layers` are the decoder layers the
    target must capture for it (see `Target.capture_layers`)."""

    feature_layers: tuple[int, ...]

    def prompts(self, requests: list[int], hidden: torch.Tensor, lengths: list[int]) -> None:
        """Prefill: hidden (B, T, F); row b holds positions 0 .. lengths[b] - 1 of
        request requests[b]."""

    def committed(
        self, requests: list[int], hidden: torch.Tensor, logits: torch.Tensor, counts: list[int]
    ) -> None:
        """A decode step: hidden (B, A, F), logits (B, A, V); the first counts[b] are the
        next positions of request requests[b], in order."""


@dataclass(frozen=True)
class DecodeRequest:
    prompt_ids: tuple[int, ...]
    params: SamplingParams
    stop_rule: StopRule


@dataclass(frozen=True)
class DecodeOutput:
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    stats: RequestStats


@dataclass
class _Row:
    """Mutable bookkeeping of one request while it is in the batch."""

    request: DecodeRequest
    uniforms: PositionUniforms | None  # None for greedy requests
    tokens: list[int] = field(default_factory=list)
    finish: FinishReason | None = None
    forwards: int = 0
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0
    accepted: list[int] = field(default_factory=list)
    attempted: list[int] = field(default_factory=list)
    tree_nodes: int = 1
    batch_size: int = 0
    started: float | None = None
    ended: float | None = None
    lookup: NgramLookup | None = None  # built at the first step that drafts from context
    context: RowContext | None = None  # heads with context attention: this row's entries

    def lookup_chain(self, length: int) -> list[int]:
        """The context-lookup draft after this row's root (the last token it committed)."""
        if self.lookup is None:
            self.lookup = NgramLookup(self.request.prompt_ids)
        self.lookup.extend(self.tokens[len(self.lookup) - len(self.request.prompt_ids) :])
        return self.lookup.propose(length)

    def datastore_chain(self, length: int, datastore: AnswerDatastore) -> list[int]:
        """The answer datastore's draft after this row's root (after `lookup_chain`)."""
        assert self.lookup is not None, "lookup_chain first: it brings the row up to date"
        return datastore.propose(self.lookup.tokens, length)

    def record_walk(self, has_children: list[bool], accepted: int) -> None:
        """Depth d+1 was attempted if the walk reached depth d and the tree went deeper."""
        for depth, deeper in enumerate(has_children):
            if not deeper:
                break
            while len(self.attempted) <= depth:
                self.attempted.append(0)
                self.accepted.append(0)
            self.attempted[depth] += 1
            self.accepted[depth] += int(depth < accepted)


@dataclass
class _Batch:
    """The running batch: cache rows, h_t and root token align with `live` (row indices)."""

    cache: RowKVCache | None = None
    live: list[int] = field(default_factory=list)
    hidden: torch.Tensor | None = None  # (B, D)
    roots: torch.Tensor | None = None  # (B,)


def decode_batch(
    target: Target,
    requests: Sequence[DecodeRequest],
    *,
    heads: DraftHeads | None = None,
    policy: TreePolicy = PLAIN_POLICY,
    decode: Decode | None = None,
    should_stop: Callable[[], bool] | None = None,
    max_batch_size: int | None = None,
    adaptive: bool = True,
    observer: PositionObserver | None = None,
    datastore: AnswerDatastore | None = None,
    tuner: TreeTuner | None = None,
) -> list[DecodeOutput]:
    """Generate for all requests; outputs in request order.

    At most max_batch_size rows (default: all) decode together; when rows finish, waiting
    requests (taken in the given order) are prefilled and join the running batch. With
    heads=None or the plain policy this is plain autoregressive decoding; `adaptive` lets a
    TreeTuner pick smaller trees or plain steps where they give more tokens/s. Greedy
    output is identical either way; sampled output has the same distribution. `observer`
    sees the target's features at every committed position. `datastore` (policies with
    lookup): a second lookup chain per row, from the target's own earlier answers. `tuner`
    (for `policy`): what earlier calls measured, so a caller decoding many small calls (one
    request at a time) does not pay the candidates' exploration in every call; default a
    fresh one.
    """
    rows = [_Row(r, PositionUniforms.for_params(r.params)) for r in requests]
    layers = heads.config.feature_layers if heads is not None else ()
    if observer is not None:
        if heads is not None and observer.feature_layers != layers:
            raise ValueError("the observer and the heads need different decoder layers")
        layers = observer.feature_layers
    if target.feature_layers != layers:  # plain decoding captures nothing extra
        target.capture_layers(layers)
    # Never more cache slots than requests: the buffer is allocated for `limit` rows.
    limit = min(max_batch_size or len(rows), len(rows))
    static = _compile_static(policy, target.device)
    waiting = deque(range(len(rows)))
    batch = _Batch()
    if tuner is None:
        tuner = TreeTuner(policy)
    elif tuner.policy != policy:
        raise ValueError("the tuner was made for another tree policy")
    with torch.inference_mode():
        while batch.live or waiting:
            if should_stop is not None and should_stop():
                for i in [*batch.live, *waiting]:
                    rows[i].finish = "cancelled"
                break
            if waiting and len(batch.live) < limit:
                admitted = [
                    waiting.popleft() for _ in range(min(limit - len(batch.live), len(waiting)))
                ]
                _admit(target, batch, rows, admitted, policy, decode, limit, observer, heads)
                _drop_finished(rows, batch)
                continue
            size = len(batch.live)
            if heads is None and not policy.uses_lookup:
                shape = PLAIN
            else:
                shape = tuner.choose(size) if adaptive else policy.shape_for(size)
            started = time.perf_counter()
            acceptance = _step(target, batch, heads, shape, static, rows, observer, datastore)
            for j, i in enumerate(batch.live):
                row = rows[i]
                row.record_walk(acceptance.has_children[j], acceptance.accepted[j])
                row.finish = extend_until_stop(
                    row.tokens, acceptance.emitted[j], row.request.stop_rule, decode
                )
            batch.roots = torch.tensor([e[-1] for e in acceptance.emitted], device=target.device)
            tokens_per_row = 1 + sum(acceptance.accepted) / size
            tuner.record(size, shape, tokens_per_row, time.perf_counter() - started)
            _drop_finished(rows, batch)
    return [_output(row) for row in rows]


def _compile_static(policy: TreePolicy, device: torch.device) -> dict[TreeShape, StaticTree]:
    return {
        shape: compile_tree(shape.spec, device)
        for _, shape in policy.table
        if shape.spec is not None
    }


def _admit(
    target: Target,
    batch: _Batch,
    rows: list[_Row],
    admitted: list[int],
    policy: TreePolicy,
    decode: Decode | None,
    slots: int,
    observer: PositionObserver | None,
    heads: DraftHeads | None = None,
) -> None:
    """Prefill the admitted rows straight into free slots of the batch cache (room for
    `slots` rows), then make them live. Rows of similar prompt length prefill together
    (`prefill_groups`), so a short prompt is never padded to a long one."""
    capacity = (
        max(len(rows[i].request.prompt_ids) for i in admitted)
        + max(rows[i].request.stop_rule.max_tokens for i in admitted)
        + policy.max_nodes
        + 1
    )
    if batch.cache is None:
        batch.cache = RowKVCache.allocate(
            target.config, 0, capacity, device=target.device, dtype=target.dtype, row_slots=slots
        )
    cache = batch.cache
    cache.reserve(cache.batch_size + len(admitted), capacity)
    for group in prefill_groups([len(rows[i].request.prompt_ids) for i in admitted]):
        joining_ids = [admitted[g] for g in group]
        joining = cache.join_view(len(joining_ids))
        hidden, roots = _prefill(target, joining, rows, joining_ids, decode, observer, heads)
        cache.adopt(joining)
        if not batch.live:
            batch.hidden, batch.roots = hidden, roots
        else:
            assert batch.hidden is not None and batch.roots is not None
            batch.hidden = torch.cat([batch.hidden, hidden])
            batch.roots = torch.cat([batch.roots, roots])
        batch.live = [*batch.live, *joining_ids]
    for i in batch.live:
        rows[i].batch_size = max(rows[i].batch_size, len(batch.live))


def prefill_groups(lengths: list[int], max_tokens: int = PREFILL_TOKENS) -> list[list[int]]:
    """Split rows (their prompt lengths) into prefill forwards of similar lengths.

    Rows are taken shortest first; a group closes when adding the next row would pad it past
    `max_tokens` tokens or waste more than a quarter of its padded tokens. Returns indices
    into `lengths`; every index appears once.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i in order:
        width = lengths[i]  # the longest so far: rows come shortest first
        padded = width * (len(current) + 1)
        if current and (padded > max_tokens or (total + width) < 0.75 * padded):
            groups.append(current)
            current, total = [], 0
        current.append(i)
        total += width
    if current:
        groups.append(current)
    return groups


def _prefill(
    target: Target,
    cache: RowKVCache,
    rows: list[_Row],
    joining: list[int],
    decode: Decode | None,
    observer: PositionObserver | None,
    heads: DraftHeads | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the prompts of rows `joining`, choose each row's first token. Returns h_t (B, F)
    and roots (B,). Heads with context attention get each row's prompt entries."""
    started = time.perf_counter()
    group = [rows[i] for i in joining]
    ids, lengths = right_pad(
        [list(r.request.prompt_ids) for r in group], target.pad_token_id, target.device
    )
    width = ids.shape[1]
    kv_length = cache.begin_forward(width)
    mask = build_step_mask(cache.lengths, kv_length, causal_block(lengths, width), target.dtype)
    positions = torch.arange(width, device=target.device).expand(len(group), -1)
    features = target.features(ids, positions, mask, cache)  # (B, T, F)
    if observer is not None:
        observer.prompts(joining, features, lengths.tolist())
    last = (lengths - 1)[:, None, None].expand(-1, 1, features.shape[-1])
    hidden = torch.gather(features, 1, last)[:, 0]  # (B, F)
    logits = target.logits(hidden)  # (B, V)
    cache.advance(lengths.tolist())
    firsts = []
    for b, row in enumerate(group):
        u = row.uniforms.take(0, 1) if row.uniforms is not None else None
        token = int(choose_tokens(logits[b : b + 1], row.request.params, u)[0])
        row.started = started
        row.forwards = 1
        row.finish = extend_until_stop(row.tokens, [token], row.request.stop_rule, decode)
        firsts.append(token)
    if heads is not None and heads.context is not None:
        for b, row in enumerate(group):
            _remember_prompt(heads, row, features[b, : int(lengths[b])], firsts[b])
    return hidden, torch.tensor(firsts, device=target.device)


def _remember_prompt(heads: DraftHeads, row: _Row, features: torch.Tensor, first: int) -> None:
    """Start `row`'s context memory with its prompt positions from the heads' context_start
    on; features (n, F) of its n prompt positions, `first` the token chosen after them."""
    prompt = row.request.prompt_ids
    skip = min(heads.config.context_start, len(prompt))
    device = features.device
    tokens = torch.tensor(prompt[skip:], dtype=torch.long, device=device)
    following = torch.tensor(
        [*prompt[skip + 1 :], first][: len(prompt) - skip], dtype=torch.long, device=device
    )
    keys, values = heads.context_entries(features[skip:], tokens, following)
    capacity = len(prompt) - skip + row.request.stop_rule.max_tokens + 1
    row.context = RowContext(capacity, int(keys.shape[-1]), device, keys.dtype)
    row.context.append(keys, values)


def _step(
    target: Target,
    batch: _Batch,
    heads: DraftHeads | None,
    shape: TreeShape,
    static: dict[TreeShape, StaticTree],
    rows: list[_Row],
    observer: PositionObserver | None = None,
    datastore: AnswerDatastore | None = None,
) -> Acceptance:
    """One propose -> verify -> accept -> commit_path round for the live rows."""
    assert batch.cache is not None and batch.hidden is not None and batch.roots is not None
    t0 = time.perf_counter()
    live_rows = [rows[i] for i in batch.live]
    chains = second = None
    if shape.lookup:
        chains = [r.lookup_chain(shape.lookup) for r in live_rows]
        if datastore is not None:
            second = [r.datastore_chain(shape.lookup, datastore) for r in live_rows]
    uses_context = heads is not None and heads.context is not None
    context = None
    if uses_context and not shape.is_plain:
        memories = [r.context for r in live_rows]
        assert all(m is not None for m in memories), "every row is prefilled with its memory"
        context = batch_context(memories)  # type: ignore[arg-type]
    tree = propose(
        heads, batch.hidden, batch.roots, shape, static.get(shape), chains, context, second
    )
    t1 = time.perf_counter()
    out = verify(target, batch.cache, tree)
    acceptance = accept(
        tree, out.logits, [r.request.params for r in live_rows], _node_uniforms(live_rows, tree)
    )
    counts = [a + 1 for a in acceptance.accepted]
    batch.cache.commit_path(acceptance.path_nodes, counts)
    if observer is not None or uses_context:
        path = acceptance.path_nodes[:, :, None]
        path_hidden = torch.gather(out.hidden, 1, path.expand(-1, -1, out.hidden.shape[-1]))
        if observer is not None:
            observer.committed(
                batch.live,
                path_hidden,
                torch.gather(out.logits, 1, path.expand(-1, -1, out.logits.shape[-1])),
                counts,
            )
        if uses_context:
            assert heads is not None
            _remember_path(heads, live_rows, tree, acceptance, path_hidden)
    t2 = time.perf_counter()
    for row in live_rows:
        row.forwards += 1
        row.draft_seconds += t1 - t0
        row.verify_seconds += t2 - t1
        row.tree_nodes = max(row.tree_nodes, tree.num_nodes)
    # Feature reuse: h_t for the next draft is the hidden state at the walk's last node.
    last = acceptance.last_node[:, None, None].expand(-1, 1, out.hidden.shape[-1])
    batch.hidden = torch.gather(out.hidden, 1, last)[:, 0]
    return acceptance


def _remember_path(
    heads: DraftHeads,
    rows: list[_Row],
    tree: TreeBuffers,
    acceptance: Acceptance,
    path_hidden: torch.Tensor,
) -> None:
    """Add the positions each row committed this step to its context memory: the accepted
    path's nodes (root first), path_hidden (B, A, F) their features, each followed by the
    next emitted token."""
    tokens = torch.gather(tree.tokens, 1, acceptance.path_nodes)  # (B, A)
    width = tokens.shape[1]
    following = torch.tensor(
        [e[:width] + [e[-1]] * (width - len(e[:width])) for e in acceptance.emitted],
        dtype=torch.long,
        device=tokens.device,
    )
    keys, values = heads.context_entries(path_hidden, tokens, following)  # (B, A, A')
    for b, row in enumerate(rows):
        if row.context is not None:
            n = acceptance.accepted[b] + 1
            row.context.append(keys[b, :n], values[b, :n])


def _node_uniforms(rows: list[_Row], tree: TreeBuffers) -> list[torch.Tensor | None]:
    """Per row (N,): the uniform of the position each node predicts (None when greedy)."""
    if all(r.uniforms is None for r in rows):
        return [None] * len(rows)
    span = int(tree.depths.max()) + 1
    out: list[torch.Tensor | None] = []
    for b, row in enumerate(rows):
        if row.uniforms is None:
            out.append(None)
            continue
        block = row.uniforms.take(len(row.tokens), span).to(tree.depths.device)
        out.append(block[tree.depths[b]])  # node at depth d predicts token len(tokens) + d
    return out


def _drop_finished(rows: list[_Row], batch: _Batch) -> None:
    """Remove finished rows from the batch (cache rows, hidden states, roots); the last live
    rows move into their slots, so only those rows are copied."""
    survivors = [j for j, i in enumerate(batch.live) if rows[i].finish is None]
    now = time.perf_counter()
    for i in batch.live:
        if rows[i].finish is not None and rows[i].ended is None:
            rows[i].ended = now
    if len(survivors) == len(batch.live):
        return
    assert batch.cache is not None and batch.hidden is not None and batch.roots is not None
    keep = fill_holes(survivors, len(batch.live))
    batch.live = [batch.live[j] for j in keep]
    index = torch.tensor(keep, dtype=torch.long, device=batch.hidden.device)
    batch.cache.select_rows(index)
    if not keep:
        batch.hidden = batch.roots = None
        return
    batch.hidden, batch.roots = batch.hidden[index], batch.roots[index]


def _output(row: _Row) -> DecodeOutput:
    wall = (row.ended or time.perf_counter()) - (row.started or time.perf_counter())
    stats = RequestStats(
        prompt_tokens=len(row.request.prompt_ids),
        completion_tokens=len(row.tokens),
        target_forwards=row.forwards,
        draft_seconds=row.draft_seconds,
        verify_seconds=row.verify_seconds,
        wall_seconds=wall,
        accepted_per_depth=tuple(row.accepted),
        attempted_per_depth=tuple(row.attempted),
        tree_nodes=row.tree_nodes,
        batch_size=row.batch_size,
    )
    assert row.finish is not None
    return DecodeOutput(tuple(row.tokens), row.finish, stats)

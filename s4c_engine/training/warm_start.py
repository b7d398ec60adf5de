"""Least-squares warm start of the s4c heads' input projections (before gradient training).

The target's own hidden state at head i's position, h_{t+i+1}, is the feature whose frozen
lm_head output is exactly the teacher distribution. So a good linear start for head i's
projection P_i is the ridge regression  P_i [h_t; E(x_{t+1}); ...; E(x_{t+i+1})] ~ h_{t+i+1}
over the training positions, solved in closed form. Medusa heads have no projection and are
left as they are.
"""

from __future__ import annotations

import torch

from s4c_engine.heads import DraftHeads
from s4c_engine.training.data import PositionData


@torch.no_grad()
def least_squares_projection(
    heads: DraftHeads,
    data: PositionData,
    head: int,
    max_positions: int,
    ridge: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Ridge solution W (D, F + (head+1)D) with W x ~ h_{t+head+1}, from a seeded subsample;
    x = [features at t; E(x_{t+1}); ...; E(x_{t+head+1})]."""
    eligible = torch.nonzero(data.depth_left > head + 1).squeeze(1)
    pick = eligible[torch.randperm(len(eligible), generator=generator)[:max_positions]]
    emb = heads.embed_weight.float().cpu()
    d = emb.shape[1]
    layers = heads.config.feature_layers
    size = heads.config.feature_size + (head + 1) * d
    gram = torch.zeros(size, size, dtype=torch.float64)
    cross = torch.zeros(size, d, dtype=torch.float64)
    for start in range(0, len(pick), 4096):
        idx = pick[start : start + 4096]
        parts = [data.hidden[idx].float()] + [data.layers[i][idx].float() for i in layers]
        parts += [emb[data.token[idx + j]] for j in range(head + 1)]
        x = torch.cat(parts, -1).double()  # (n, size)
        y = data.hidden[idx + head + 1].double()  # (n, D)
        gram += x.T @ x
        cross += x.T @ y
    scale = gram.diagonal().mean() * ridge
    solution = torch.linalg.solve(gram + scale * torch.eye(size, dtype=torch.float64), cross)
    return solution.T.float()  # (D, size)


def warm_start(
    heads: DraftHeads,
    data: PositionData,
    *,
    max_positions: int = 50_000,
    ridge: float = 1e-3,
    seed: int = 0,
) -> None:
    """Set every s4c input projection to its ridge-regression solution (in place)."""
    if heads.config.kind != "s4c":
        return
    generator = torch.Generator().manual_seed(seed)
    for i, proj in enumerate(heads.input_proj):
        weight = least_squares_projection(heads, data, i, max_positions, ridge, generator)
        with torch.no_grad():
            proj.weight.copy_(weight.to(proj.weight.device, proj.weight.dtype))

"""Least-squares warm start of the s4c heads' input projections (before gradient training).

The target's own hidden state at head i's position, h_{t+i+1}, is the feature whose frozen
lm_head output is exactly the teacher distribution. So a good linear start for head i's
projection P_i is the ridge regression  P_i [h_t; E(x_{t+1}); ...; E(x_{t+i+1})] ~ h_{t+i+1}
over the training positions, solved in closed form. Medusa heads have no projection and are
left as they are.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from s4c_engine.heads import DraftHeads, fusion_input
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
    x = [h_t; fused layers at t (as `fusion_input` scales them); E(x_{t+1}); ...;
    E(x_{t+head+1})]."""
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
        parts = [data.hidden[idx].float()]
        if layers:
            raw = torch.cat([data.layers[i][idx].float() for i in layers], -1)
            parts.append(fusion_input(raw, d))
        parts += [emb[data.token[idx + j]] for j in range(head + 1)]
        x = torch.cat(parts, -1).double()  # (n, size)
        y = data.hidden[idx + head + 1].double()  # (n, D)
        gram += x.T @ x
        cross += x.T @ y
    scale = gram.diagonal().mean() * ridge
    solution: torch.Tensor = torch.linalg.solve(
        gram + scale * torch.eye(size, dtype=torch.float64), cross
    )
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
    d = heads.config.hidden_size
    extra = heads.config.feature_size - d
    for i, module in enumerate(heads.input_proj):
        proj = cast(nn.Linear, module)
        weight = least_squares_projection(heads, data, i, max_positions, ridge, generator)
        weight = weight.to(proj.weight.device, proj.weight.dtype)
        with torch.no_grad():  # columns [h_t | fused layers | path] -> input_proj and fuse
            proj.weight.copy_(torch.cat([weight[:, :d], weight[:, d + extra :]], 1))
            if extra:
                cast(nn.Linear, heads.fuse[i]).weight.copy_(weight[:, d : d + extra])

"""Draft-head training: self-distillation data, the feature cache and the head trainer.

Pipeline: `distill` (the frozen target answers the training prompts and records its own
last hidden states and top-k logits along each answer), `data` (those records as flat
position arrays, and the draft vocabulary), `warm_start` + `train` (heads learn the target's
distributions from the cached features), `cli` (the whole recipe, `s4c train-heads`).
Importing this package loads nothing heavy; the modules import torch themselves.
"""

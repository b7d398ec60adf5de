"""Draft-head training: self-distillation data, the feature cache and the head trainer.

Pipeline: `distill` (the frozen target answers the training prompts and records its own
last hidden states and top-k logits along each answer), `vocab` (the draft vocabulary),
`train` (heads learn the target's next-token distributions from the cached features).
Importing this package loads nothing heavy; the modules import torch themselves.
"""

"""s4c_engine: S4C speculative decoding on stock Hugging Face causal LMs.

Coherent multi-head drafting (each draft head conditioned on the target's hidden state and on
the tokens drafted before it on the same path) plus a continuous verification tree (one target
forward verifies a whole draft tree; the hidden states it computes seed the next draft).

This package file stays torch-free: the API imports parameter dataclasses from
`s4c_engine.config` without loading torch. Tensor dimension names used throughout:
B batch, T sequence, N tree nodes, K draft heads, V vocabulary, D hidden size.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"

"""Task encoder: one condition vector from a task described by per-class support features.

A task is an array (k, F): row j holds the features of class j, the class-wise mean of fixed
features of a few labelled support examples (computed upstream, `wsl.zoos.tasks`). Three
symmetries are handled at three places, each on purpose:

* the support examples of a class carry no order, so they are pooled by a mean upstream: the
  row is invariant to the order (and number) of support examples;
* the classes are encoded by ONE shared MLP applied to every row (`TaskEncoder.per_class`), so
  relabelling the classes of the input permutes the per-class embeddings the same way
  (equivariance): no class is treated differently from another by its position;
* the per-class embeddings are then flattened in label order and mapped to one vector, which is
  order-dependent: class j of the task is output unit j of the generated network, so the
  generator must know which row is which label. An invariant pooling here would let it output
  the right classifier heads in any order.
"""

from __future__ import annotations

import flax.linen as nn
import jax


class TaskEncoder(nn.Module):
    """(batch, k, F) support features → (batch, dim): a shared per-class MLP, then a dense map of
    the label-ordered per-class embeddings."""

    dim: int
    embed: int = 64

    def setup(self):
        self.class_in = nn.Dense(self.embed)
        self.class_out = nn.Dense(self.embed)
        self.out = nn.Dense(self.dim)

    def per_class(self, support: jax.Array) -> jax.Array:
        """(..., k, F) → (..., k, embed): the same MLP on every class row (equivariant to
        relabelling)."""
        return self.class_out(nn.silu(self.class_in(support)))

    def __call__(self, support: jax.Array) -> jax.Array:
        h = self.per_class(support)
        # Flattened in label order: which row is which class matters to the generated network.
        return self.out(nn.silu(h.reshape(*h.shape[:-2], -1)))

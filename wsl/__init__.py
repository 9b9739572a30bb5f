"""wsl: the weight-space core — `WeightSpace`, permutations, sharding helpers, the CLI."""

from wsl.weight_space import TensorSpec, WeightSpace, WeightSpaceError

__all__ = ["TensorSpec", "WeightSpace", "WeightSpaceError"]

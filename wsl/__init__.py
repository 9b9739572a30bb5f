"""wsl: the weight-space core — `WeightSpace`, permutations, alignment, meshes, configs, errors.

The rest installs beneath it: `wsl.zoos`, `wsl.models`, `wsl.train`, `wsl.eval` and the commands
(`wsl.commands`), each importing only the packages before it in that order.
"""

from wsl.weight_space import TensorSpec, WeightSpace, WeightSpaceError

__all__ = ["TensorSpec", "WeightSpace", "WeightSpaceError"]

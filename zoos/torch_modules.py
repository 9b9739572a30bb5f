"""PyTorch modules that compute what wsl's architectures compute, and a loader for exported models.

`torch_module(arch)` builds an `nn.Module` for an `Architecture` (mlp, small_cnn, cnn_s, resnet,
transformer) with the architecture's config; its `state_dict` has the PyTorch names and layouts of
`wsl.zoos.torch_layout`, so `load_state(module, params)` fills it from wsl params (a Flax tree),
flat JAX paths or a PyTorch-style state dict, and `load_exported(path)` reads a file written by
`wsl zoo export` (safetensors or npz, JAX or ``--torch-layout``) into a module in eval mode.

What an "obvious" rebuild gets wrong and these modules do not:

- Flax ``padding="SAME"`` pads ``total = max((ceil(n / s) - 1)·s + k - n, 0)`` pixels per axis,
  ``total // 2`` before and the rest after: a 3×3 stride-2 convolution on an even size pads
  (0, 1), which ``nn.Conv2d(padding=1)`` (1, 1) does not match. Convolutions here pad with
  `F.pad` before an unpadded `nn.Conv2d`.
- ``gelu`` is Flax's default tanh approximation; LayerNorm and GroupNorm use Flax's epsilon 1e-6
  (PyTorch's default is 1e-5); the resnet's LayerNorm normalises over channels at each pixel.
- Attention scales queries by 1/sqrt(head_dim) with query/key/value widths heads·head_dim that may
  differ from the model width (`torch.nn.MultiheadAttention` cannot express that).

Inputs follow PyTorch: images (architectures whose `input_shape` is (H, W, C)) are given as
(batch, C, H, W) and everything else as (batch, *input_shape); ``channels_last=True`` takes images
as JAX does, (batch, H, W, C). `module.input_shape` is the per-example shape a module expects.
Dropout is not part of these modules: they are for inference.

Needs the ``torch`` extra (``pip install 'wsl[torch]'``); nothing else in `wsl.zoos` imports this
module.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

try:
    import torch
    from torch import nn
    from torch.nn import functional as F
except ImportError as err:  # pragma: no cover - depends on the installation
    raise ImportError("wsl.zoos.torch_modules needs PyTorch: pip install 'wsl[torch]'") from err

from wsl.weight_space import WeightSpace, nest_paths
from wsl.zoos.architectures import Architecture, build
from wsl.zoos.errors import ArchitectureError, ModelFileError, TensorNameError
from wsl.zoos.model_files import format_from_suffix, read_model
from wsl.zoos.torch_layout import from_torch_state, name_list, to_torch_state, torch_name

__all__ = ["ACTIVATIONS", "FlaxConv2d", "exported_architecture", "flax_padding", "load_exported",
           "load_state", "torch_module"]

# The functions of `wsl.zoos.architectures.ACTIVATIONS`, in torch.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "gelu": lambda x: F.gelu(x, approximate="tanh"),  # flax.linen.gelu: approximate=True
    "silu": F.silu,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.01),  # flax.linen.leaky_relu's negative_slope
    "identity": lambda x: x,
}
FLAX_NORM_EPSILON = 1e-6  # flax.linen.LayerNorm and GroupNorm


def _activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name not in ACTIVATIONS:
        raise ArchitectureError(f"activation {name!r} has no PyTorch counterpart here; "
                                f"choose from {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


# ------------------------------------------------------------------------------- layers
def flax_padding(size: int, kernel: int, stride: int, padding: str) -> tuple[int, int]:
    """(before, after) padding of one spatial axis as Flax / XLA compute it for ``padding``."""
    if padding == "VALID":
        return 0, 0
    if padding != "SAME":
        raise ValueError(f"padding {padding!r}: expected 'SAME' or 'VALID'")
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class FlaxConv2d(nn.Conv2d):
    """`nn.Conv2d` (NCHW, OIHW weights) padded as Flax pads: ``"SAME"`` may pad more after than
    before (stride 2 on an even size pads (0, 1)), which no symmetric ``padding=`` reproduces."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: str = "SAME"):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0)
        flax_padding(1, 1, 1, padding)  # reject an unknown padding now, not at the first call
        self.flax_padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        top, bottom = flax_padding(x.shape[-2], kh, sh, self.flax_padding)
        left, right = flax_padding(x.shape[-1], kw, sw, self.flax_padding)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, flax_padding={self.flax_padding!r}"


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map at each pixel (Flax's LayerNorm on NHWC)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


class Attention(nn.Module):
    """Flax `MultiHeadDotProductAttention` (self-attention, no mask): query, key and value project
    to heads·head_dim features split head-major, queries are scaled by 1/sqrt(head_dim), and
    `out` projects the heads back to the model width."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.query = nn.Linear(dim, heads * head_dim)
        self.key = nn.Linear(dim, heads * head_dim)
        self.value = nn.Linear(dim, heads * head_dim)
        self.out = nn.Linear(heads * head_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        split = lambda y: y.reshape(batch, tokens, self.heads, self.head_dim).transpose(1, 2)
        query = split(self.query(x)) / math.sqrt(self.head_dim)
        weights = torch.softmax(query @ split(self.key(x)).transpose(-1, -2), dim=-1)
        heads = (weights @ split(self.value(x))).transpose(1, 2)
        return self.out(heads.reshape(batch, tokens, self.heads * self.head_dim))


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """`wsl.zoos.architectures.patchify` in torch, on JAX-layout inputs: images (B, H, W, C) →
    (B, tokens, patch²·C) row-major over patches; signals (B, L[, C]) → (B, L/patch, patch·C)."""
    if x.ndim == 4:
        b, h, w, c = x.shape
        x = x.reshape(b, h // patch, patch, w // patch, patch, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)
    if x.ndim == 2:
        x = x[..., None]
    b, length, c = x.shape
    return x.reshape(b, length // patch, patch * c)


# ------------------------------------------------------------------------------- modules
class WslModule(nn.Module):
    """A PyTorch twin of one wsl `Architecture`; `architecture` and `input_shape` tell which."""

    def __init__(self, architecture: Architecture, channels_last: bool):
        super().__init__()
        self.architecture = architecture
        self.channels_last = bool(channels_last)
        shape = tuple(architecture.input_shape)
        self.is_image = len(shape) == 3
        self.input_shape = (shape if channels_last or not self.is_image
                            else (shape[2], shape[0], shape[1]))
        self.activation = architecture.config.get("activation", "identity")
        _activation(self.activation)  # an unknown one fails here, not at the first call

    def act(self, x: torch.Tensor) -> torch.Tensor:
        return ACTIVATIONS[self.activation](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.input_shape:
            layout = ("" if not self.is_image else
                      " (images as (batch, H, W, C): channels_last=True)" if self.channels_last
                      else " (images as (batch, C, H, W); channels_last=True takes (batch, H, W, "
                           "C))")
            raise ValueError(f"{self.architecture.name}: expected inputs of shape "
                             f"(batch, {', '.join(map(str, self.input_shape))}){layout}, got "
                             f"{tuple(x.shape)}")
        return self.logits(x)

    def nchw(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2) if self.channels_last else x

    def jax_layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1) if self.is_image and not self.channels_last else x

    def extra_repr(self) -> str:
        config = ", ".join(f"{k}={v}" for k, v in self.architecture.config.items())
        return f"{self.architecture.name}({config}), channels_last={self.channels_last}"


class MLP(WslModule):
    def __init__(self, architecture: Architecture, channels_last: bool = False):
        super().__init__(architecture, channels_last)
        config = architecture.config
        sizes = [math.prod(architecture.input_shape), *config["widths"], config["num_classes"]]
        self.depth = len(sizes) - 1
        for i in range(self.depth):
            self.add_module(f"dense_{i}", nn.Linear(sizes[i], sizes[i + 1]))

    def logits(self, x):
        x = self.jax_layout(x).flatten(1)  # Flax flattens (H, W, C) in that order
        for i in range(self.depth):
            x = getattr(self, f"dense_{i}")(x)
            x = self.act(x) if i < self.depth - 1 else x
        return x


class SmallCNN(WslModule):
    def __init__(self, architecture: Architecture, channels_last: bool = False):
        super().__init__(architecture, channels_last)
        config = architecture.config
        channels_in = architecture.input_shape[-1]
        self.num_layers = config["num_layers"]
        for i in range(self.num_layers):
            self.add_module(f"conv_{i}", FlaxConv2d(channels_in if i == 0 else config["channels"],
                                                    config["channels"], 3, 2, "SAME"))
        self.dense_0 = nn.Linear(config["channels"], config["num_classes"])

    def logits(self, x):
        x = self.nchw(x)
        for i in range(self.num_layers):
            x = self.act(getattr(self, f"conv_{i}")(x))
        return self.dense_0(x.mean(dim=(2, 3)))


class CNNs(WslModule):
    def __init__(self, architecture: Architecture, channels_last: bool = False):
        super().__init__(architecture, channels_last)
        h, w, c = architecture.input_shape
        self.conv_0 = FlaxConv2d(c, 8, 5, padding="VALID")
        self.conv_1 = FlaxConv2d(8, 6, 5, padding="VALID")
        self.conv_2 = FlaxConv2d(6, 4, 2, padding="VALID")
        side = lambda n: ((n - 4) // 2 - 4) // 2 - 1  # conv 5, pool 2, conv 5, pool 2, conv 2
        # torch_layout flattens this kernel in NCHW order, as x.flatten(1) does here.
        self.dense_0 = nn.Linear(4 * side(h) * side(w), 20)
        self.dense_1 = nn.Linear(20, architecture.config["num_classes"])

    def logits(self, x):
        x = self.nchw(x)
        x = self.act(F.max_pool2d(self.conv_0(x), 2))
        x = self.act(F.max_pool2d(self.conv_1(x), 2))
        x = self.act(self.conv_2(x)).flatten(1)
        return self.dense_1(self.act(self.dense_0(x)))


class ResNet(WslModule):
    def __init__(self, architecture: Architecture, channels_last: bool = False):
        super().__init__(architecture, channels_last)
        config = architecture.config
        self.widths = [config["width"] * 2 ** s for s in range(config["stages"])]
        self.blocks_per_stage = config["blocks_per_stage"]

        def norm(channels):
            if config["norm"] == "layer":
                return ChannelLayerNorm(channels, eps=FLAX_NORM_EPSILON)
            return nn.GroupNorm(config["norm_groups"], channels, eps=FLAX_NORM_EPSILON)

        self.stem = FlaxConv2d(architecture.input_shape[-1], self.widths[0], 3)
        for s, width in enumerate(self.widths):
            if s > 0:  # Flax's default padding, SAME, adds nothing to a 1×1 kernel
                self.add_module(f"stage{s}_proj", FlaxConv2d(self.widths[s - 1], width, 1, 2))
            for b in range(self.blocks_per_stage):
                prefix = f"stage{s}_block{b}"
                self.add_module(f"{prefix}_norm_0", norm(width))
                self.add_module(f"{prefix}_conv_0", FlaxConv2d(width, width, 3))
                self.add_module(f"{prefix}_norm_1", norm(width))
                self.add_module(f"{prefix}_conv_1", FlaxConv2d(width, width, 3))
        self.final_norm = norm(self.widths[-1])
        self.head = nn.Linear(self.widths[-1], config["num_classes"])

    def logits(self, x):
        layer = lambda name: getattr(self, name)
        x = self.stem(self.nchw(x))
        for s in range(len(self.widths)):
            if s > 0:
                x = layer(f"stage{s}_proj")(self.act(x))
            for b in range(self.blocks_per_stage):
                prefix = f"stage{s}_block{b}"
                h = layer(f"{prefix}_conv_0")(self.act(layer(f"{prefix}_norm_0")(x)))
                h = self.act(layer(f"{prefix}_norm_1")(h))
                x = x + layer(f"{prefix}_conv_1")(h)
        x = self.act(self.final_norm(x))
        return self.head(x.mean(dim=(2, 3)))


class Transformer(WslModule):
    def __init__(self, architecture: Architecture, channels_last: bool = False):
        super().__init__(architecture, channels_last)
        config = architecture.config
        shape, patch, dim = architecture.input_shape, config["patch"], config["dim"]
        if len(shape) == 3:
            tokens, features = (shape[0] // patch) * (shape[1] // patch), patch * patch * shape[2]
        else:
            tokens, features = shape[0] // patch, patch * (shape[1] if len(shape) == 2 else 1)
        self.patch, self.depth = patch, config["depth"]
        self.embed = nn.Linear(features, dim)
        self.pos_embedding = nn.Parameter(torch.zeros(tokens, dim))
        for i in range(self.depth):
            self.add_module(f"block{i}_norm_0", nn.LayerNorm(dim, eps=FLAX_NORM_EPSILON))
            self.add_module(f"block{i}_attention",
                            Attention(dim, config["heads"], config["head_dim"]))
            self.add_module(f"block{i}_norm_1", nn.LayerNorm(dim, eps=FLAX_NORM_EPSILON))
            self.add_module(f"block{i}_mlp_in", nn.Linear(dim, config["mlp_dim"]))
            self.add_module(f"block{i}_mlp_out", nn.Linear(config["mlp_dim"], dim))
        self.final_norm = nn.LayerNorm(dim, eps=FLAX_NORM_EPSILON)
        self.head = nn.Linear(dim, config["num_classes"])

    def logits(self, x):
        layer = lambda name: getattr(self, name)
        x = self.embed(patchify(self.jax_layout(x), self.patch)) + self.pos_embedding
        for i in range(self.depth):
            x = x + layer(f"block{i}_attention")(layer(f"block{i}_norm_0")(x))
            h = self.act(layer(f"block{i}_mlp_in")(layer(f"block{i}_norm_1")(x)))
            x = x + layer(f"block{i}_mlp_out")(h)
        return self.head(self.final_norm(x).mean(dim=1))


MODULES: dict[str, type[WslModule]] = {"mlp": MLP, "small_cnn": SmallCNN, "cnn_s": CNNs,
                                       "resnet": ResNet, "transformer": Transformer}


def torch_module(architecture: Architecture, *, channels_last: bool = False) -> WslModule:
    """A freshly initialised (PyTorch defaults) float32 `nn.Module` computing `architecture`'s
    logits; fill it with `load_state`. Images are NCHW unless ``channels_last``."""
    if not isinstance(architecture, Architecture):
        raise TypeError(f"torch_module needs a wsl Architecture (wsl.zoos.architectures.build), "
                        f"got {type(architecture).__name__}")
    if architecture.name not in MODULES:
        raise ArchitectureError(f"no PyTorch module for architecture {architecture.name!r}; "
                                f"there are {sorted(MODULES)}")
    module = MODULES[architecture.name](architecture, channels_last)
    names = set(module.state_dict())
    expected = {torch_name(t.path) for t in architecture.weight_space.tensors}
    if names != expected:  # the Flax architecture changed without its twin here
        raise ArchitectureError(
            f"the PyTorch {architecture.name} module does not match the weight space: missing "
            f"{name_list(sorted(expected - names))}, extra {name_list(sorted(names - expected))}")
    return module


# ------------------------------------------------------------------------------- weights
def _numpy(name: str, value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        value = value.float() if value.is_floating_point() else value
        value = value.numpy()
    value = np.asarray(value)
    if not np.issubdtype(value.dtype, np.floating):
        raise ModelFileError(f"tensor {name!r} has dtype {value.dtype}; weights must be floating "
                             f"point")
    return value


def _flatten_tree(tree: Mapping, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten_tree(value, path + "/"))
        else:
            flat[path] = value
    return flat


def _params(space: WeightSpace, weights: Mapping) -> dict:
    """wsl params (nested) from a Flax tree, flat JAX paths or a PyTorch-style state dict; every
    tensor must be there with its shape, and nothing else."""
    if not isinstance(weights, Mapping):
        raise ModelFileError(f"expected a params tree or a state dict, got "
                             f"{type(weights).__name__}")
    flat = _flatten_tree(weights)
    jax_names = [t.path for t in space.tensors]
    torch_names = [torch_name(p) for p in jax_names]
    if all(n in flat for n in jax_names):
        used = set(jax_names)
        params = {}
        for t in space.tensors:
            value = _numpy(t.path, flat[t.path])
            if value.shape != t.shape:
                raise ModelFileError(f"{t.path}: shape {value.shape}, expected {t.shape}")
            params[t.path] = value
        params = nest_paths(params)
    elif all(n in flat for n in torch_names):
        used = set(torch_names)
        params = from_torch_state(space, {n: _numpy(n, flat[n]) for n in torch_names})
    else:
        missing = min(([n for n in jax_names if n not in flat],
                       [n for n in torch_names if n not in flat]), key=len)
        raise TensorNameError(f"the names fit neither the JAX names {name_list(jax_names)} nor "
                              f"the PyTorch names {name_list(torch_names)}; got {name_list(flat)} "
                              f"(missing {name_list(missing)})")
    extra = [n for n in flat if n not in used]
    if extra:
        raise ModelFileError(f"{len(extra)} tensors are not in the architecture's weight space: "
                             f"{name_list(extra)}")
    return params


def load_state(module: WslModule, weights: Mapping) -> WslModule:
    """Copy `weights` into `module` and return it: a wsl / Flax params tree (``arch.init``,
    ``zoo.params(i)``), flat JAX paths (``conv_0/kernel``) or a PyTorch-style state dict
    (``conv_0.weight``, torch layouts; numpy arrays or tensors). Every tensor of the
    architecture must be there with its shape; an unknown name is an error."""
    if not isinstance(module, WslModule):
        raise TypeError(f"load_state needs a module from torch_module, got "
                        f"{type(module).__name__}")
    space = module.architecture.weight_space
    state = to_torch_state(space, _params(space, weights))
    module.load_state_dict({name: torch.from_numpy(np.array(value, dtype=np.float32))
                            for name, value in state.items()})
    return module


# ------------------------------------------------------------------------------- exports
def _metadata(path: Path) -> dict[str, str]:
    if format_from_suffix(path) != "safetensors":
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as file:
            return dict(file.metadata() or {})
    except Exception as err:  # safetensors raises its own error types
        raise ModelFileError(f"{path}: cannot read as safetensors "
                             f"({type(err).__name__}: {err})") from err


def _json_field(path: Path, metadata: Mapping[str, str], key: str):
    try:
        return json.loads(metadata[key])
    except (TypeError, ValueError) as err:
        raise ModelFileError(f"{path}: metadata field {key!r} is not JSON ({err})") from None


def exported_architecture(path: str | os.PathLike) -> Architecture:
    """The architecture a `wsl zoo export` safetensors file records: its zoo's ``architecture``
    metadata ({name, config}) with the exported row's own ``activation`` where the zoo mixes
    activations (as `Zoo.architecture_of` does). npz files carry no metadata."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    metadata = _metadata(path)
    if "architecture" not in metadata:
        what = ("an npz file carries no metadata" if format_from_suffix(path) == "npz"
                else f"its metadata has no 'architecture' field (fields: {sorted(metadata)})")
        raise ModelFileError(f"{path}: cannot tell the architecture: {what}; pass "
                             f"architecture=wsl.zoos.architectures.build(name, **config) (the "
                             f"zoo's manifest.json 'architecture' field)")
    spec = _json_field(path, metadata, "architecture")
    row = _json_field(path, metadata, "row") if "row" in metadata else {}
    if not (isinstance(spec, dict) and isinstance(spec.get("name"), str)
            and isinstance(spec.get("config", {}), dict) and isinstance(row, dict)):
        raise ModelFileError(f"{path}: metadata 'architecture' must be {{'name': str, 'config': "
                             f"{{...}}}} and 'row' an object; got {metadata['architecture']!r:.80}")
    config = dict(spec.get("config", {}))
    if isinstance(row.get("activation"), str):
        config["activation"] = row["activation"]
    try:
        return build(spec["name"], **config)
    except ArchitectureError as err:
        raise ModelFileError(f"{path}: metadata 'architecture': {err}") from None


def load_exported(path: str | os.PathLike, architecture: Architecture | None = None, *,
                  channels_last: bool = False) -> WslModule:
    """The model in a file written by `wsl zoo export` (safetensors or npz, JAX names or
    ``--torch-layout``) as a PyTorch module in eval mode.

    The architecture comes from the safetensors metadata unless given (npz files need it).
    Tensors the architecture does not use are reported in a warning and ignored.
    Images are NCHW unless ``channels_last``.
    """
    path = Path(path)
    if architecture is None:
        architecture = exported_architecture(path)
    params, extra = read_model(path, architecture.weight_space)
    if extra:  # every tensor the module needs is there with its shape; as model_files.load_model
        warnings.warn(f"{path}: {len(extra)} tensors are not in the {architecture.name} weight "
                      f"space and are ignored: {name_list(extra)}", stacklevel=2)
    module = torch_module(architecture, channels_last=channels_last)
    return load_state(module, params).eval()

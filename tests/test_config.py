"""Config overrides: types, nesting, unknown keys, JSON round-trip."""

import dataclasses
import pickle
from collections.abc import Mapping
from typing import Any

import pytest

from wsl.config import (
    REQUIRED,
    ConfigError,
    FrozenMap,
    builder_config,
    builder_defaults,
    coerce_fields,
    from_dict,
    load,
    override,
    save,
    to_dict,
)


@dataclasses.dataclass(frozen=True)
class Optim:
    lr: float = 1e-3
    schedule: str = "cosine"


@dataclasses.dataclass(frozen=True)
class Run:
    steps: int = 100
    widths: tuple[int, ...] = (32, 32)
    seed: int | None = None
    ema: bool = False
    optim: Optim = Optim()


def test_override_parses_and_coerces():
    cfg = override(Run(), ["steps=7", "widths=[8, 4]", "optim.lr=1", "ema=true", "seed=none",
                           "optim.schedule=constant"])
    assert cfg == Run(7, (8, 4), None, True, Optim(1.0, "constant"))
    assert isinstance(cfg.optim.lr, float)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"optim\.lrr.*optim\.lr"):
        override(Run(), ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="steps"):
        from_dict(Run, {"stepz": 3})


def test_bad_values_are_named():
    with pytest.raises(ConfigError, match="steps"):
        override(Run(), ["steps=many"])
    with pytest.raises(ConfigError, match="key=value"):
        override(Run(), ["steps"])


def test_json_round_trip(tmp_path):
    cfg = override(Run(), {"widths": (3,), "optim.lr": 0.5})
    save(cfg, tmp_path / "config.json")
    assert load(Run, tmp_path / "config.json") == cfg
    assert to_dict(cfg)["optim"]["lr"] == 0.5


@dataclasses.dataclass(frozen=True)
class Ranges:
    names: tuple[str, ...] = ("relu",)
    lr: tuple[float, ...] = (1e-3,)
    lo: int = 0
    hi: int = 1
    options: Mapping[str, Any] = FrozenMap()

    def __post_init__(self):
        coerce_fields(self)
        if self.lo > self.hi:
            raise ConfigError(f"lo={self.lo} > hi={self.hi}")


def test_bare_lists_for_tuple_fields():
    cfg = override(Ranges(), ["names=relu,tanh", "lr=1e-4,1e-2"])
    assert cfg.names == ("relu", "tanh") and cfg.lr == (1e-4, 1e-2)
    assert override(Ranges(), ["names=[relu, 'tanh']", "lr=[1, 2]"]) == Ranges(("relu", "tanh"),
                                                                            (1.0, 2.0))
    assert override(Ranges(), ["names=gelu", "lr=0.5"]) == Ranges(("gelu",), (0.5,))
    assert isinstance(override(Ranges(), ["lr=1,2"]).lr[0], float)
    with pytest.raises(ConfigError, match="lr: expected float, got 'fast'"):
        override(Ranges(), ["lr=fast,1e-2"])
    assert override(Run(), ["widths=8,4"]).widths == (8, 4)


def test_overrides_apply_at_once_and_validate_on_creation():
    # hi first would fail alone (lo=5 > hi=1) if each assignment were applied on its own.
    assert override(Ranges(), ["lo=5", "hi=9"]) == override(Ranges(), ["hi=9", "lo=5"])
    with pytest.raises(ConfigError, match="lo=5 > hi=1"):
        override(Ranges(), ["lo=5"])
    with pytest.raises(ConfigError, match="lr: expected float"):
        Ranges(lr=("x",))  # a config written in code gets the same checks
    assert Ranges(names=["a"], options={"size": [8, 8]}) == Ranges(("a",), options={"size": (8, 8)})
    with pytest.raises(ConfigError, match="overlaps"):
        override(Run(), ["optim={'lr': 1.0}", "optim.lr=2"])


def test_frozen_maps_are_hashable_and_read_like_dicts():
    a, b = FrozenMap({"w": [1, 2], "n": {"k": 3}}), FrozenMap(n={"k": 3}, w=(1, 2))
    assert a == b and hash(a) == hash(b) and a == {"w": (1, 2), "n": {"k": 3}}
    assert dict(a)["w"] == (1, 2) and a.get("x", 0) == 0 and {**a}.keys() == {"w", "n"}
    with pytest.raises(TypeError):
        a["w"] = 3  # type: ignore[index]
    cfg = override(Ranges(), ["options={'size': [8, 8]}"])
    assert isinstance(cfg.options, FrozenMap)
    assert hash(cfg) == hash(Ranges(options={"size": (8, 8)}))
    assert to_dict(cfg)["options"] == {"size": [8, 8]}
    assert from_dict(Ranges, to_dict(cfg)) == cfg
    assert pickle.loads(pickle.dumps(a)) == a


def test_builder_config_lists_unknown_and_missing_keys():
    def builder(size, width=4, activation="relu"):
        return size, width, activation

    assert builder_defaults(builder) == {"size": REQUIRED, "width": 4, "activation": "relu"}
    assert builder_config(builder, {"size": 2}, what="thing 'b'") == {
        "size": 2, "width": 4, "activation": "relu"}
    with pytest.raises(ConfigError, match=r"unknown config \['widht'\] for thing 'b'; valid: "
                                          r"\['activation', 'size', 'width'\]"):
        builder_config(builder, {"size": 2, "widht": 3}, what="thing 'b'")
    with pytest.raises(ConfigError, match=r"thing 'b' needs config \['size'\]"):
        builder_config(builder, {}, what="thing 'b'")
    assert builder_defaults(builder, exclude=("size",)) == {"width": 4, "activation": "relu"}


def test_union_errors_say_why():
    @dataclasses.dataclass(frozen=True)
    class Maybe:
        size: tuple[int, int] | None = None

    assert override(Maybe(), ["size=8,8"]).size == (8, 8)
    with pytest.raises(ConfigError, match="expected 2 items, got 3"):
        override(Maybe(), ["size=[1,2,3]"])

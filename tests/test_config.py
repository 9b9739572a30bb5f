"""Config overrides: types, nesting, unknown keys, JSON round-trip."""

import dataclasses

import pytest

from wsl.config import ConfigError, from_dict, load, override, save, to_dict


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

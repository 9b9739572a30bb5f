"""Dataset cards for zoos: a README.md with YAML front matter in the Hugging Face datasets
convention, and its figures (`wsl zoo card`, and every whole-zoo export).

The front matter holds the hub's fields (``pretty_name``, ``license``, ``tags``,
``task_categories``, ``size_categories``, and ``configs`` / ``data_files`` inside an export) and,
under ``wsl``, what a weight-space learner needs: architecture and config, parameter count,
dataset, recipe and config, counts, checkpoints, every column with its type and meaning, and
provenance. ``citation`` is BibTeX for the user to complete: an entry for the zoo itself and the
paper its recipe follows. The YAML is written by `to_yaml`, a small emitter of mappings, lists and
scalars (quoted whenever a plain scalar could be read as something else), so that no YAML package
is needed. Figures are PNGs drawn with matplotlib's Agg canvas: test accuracy at each model's last
checkpoint, and a hyperparameter against it, coloured by another.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import re
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsl.outputs import check_output_dir
from wsl.zoos.errors import ZooError
from wsl.zoos.model_files import write_atomic

CARD = "README.md"
FIGURES = "figures"
HISTOGRAM_FIGURE = f"{FIGURES}/accuracy_histogram.png"
SCATTER_FIGURE = f"{FIGURES}/hyperparameters.png"
LICENSE_UNKNOWN = "unknown"

# --------------------------------------------------------------------------------- citations
_BIBTEX = {
    "unterthiner2020predicting": """\
@article{unterthiner2020predicting,
  title   = {Predicting Neural Network Accuracy from Weights},
  author  = {Unterthiner, Thomas and Keysers, Daniel and Gelly, Sylvain and Bousquet, Olivier
             and Tolstikhin, Ilya},
  journal = {arXiv preprint arXiv:2002.11448},
  year    = {2020}
}""",
    "schurholt2022model": """\
@inproceedings{schurholt2022model,
  title     = {Model Zoos: A Dataset of Diverse Populations of Neural Network Models},
  author    = {Sch{\\"u}rholt, Konstantin and Taskiran, Diyar and Knyazev, Boris
               and Gir{\\'o}-i-Nieto, Xavier and Borth, Damian},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS),
               Datasets and Benchmarks Track},
  year      = {2022}
}""",
    "greydanus2024scaling": """\
@inproceedings{greydanus2024scaling,
  title     = {Scaling Down Deep Learning with {MNIST-1D}},
  author    = {Greydanus, Sam and Kobak, Dmitry},
  booktitle = {International Conference on Machine Learning (ICML)},
  year      = {2024}
}""",
}
# recipe name (or import format) -> (what it follows, BibTeX key)
RECIPE_SOURCES = {
    "small-cnn": ("the Small CNN Zoo (Unterthiner et al. 2020)", "unterthiner2020predicting"),
    "seeds": ("the Small CNN Zoo architecture (Unterthiner et al. 2020)",
              "unterthiner2020predicting"),
    "import:small-cnn-zoo": ("the Small CNN Zoo (Unterthiner et al. 2020)",
                             "unterthiner2020predicting"),
    "cnn-s": ("Model Zoos CNN-s (Schürholt et al. 2022)", "schurholt2022model"),
    "import:model-zoos": ("Model Zoos (Schürholt et al. 2022)", "schurholt2022model"),
    "mlp-mnist1d": ("the MNIST-1D dataset (Greydanus and Kobak 2024)", "greydanus2024scaling"),
}

# Columns that are measurements of a model, not settings of its training.
_MEASURED = ("model", "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss",
             "test_acc", "gap", "diverged", "seed", "trial", "file")
_SCATTER_X = ("lr", "weight_decay", "init_scale", "dropout", "train_fraction", "bias_init")
_SCATTER_COLOR = ("optimizer", "activation", "init", "weight_decay", "init_scale", "dropout",
                  "train_fraction", "lr", "bias_init")


# ------------------------------------------------------------------------------- tiny YAML
_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9_./+(),-]*(?: [A-Za-z0-9_./+(),-]+)*\Z")
# YAML 1.1 readers (PyYAML) take these words as booleans or null when unquoted.
_RESERVED = {"true", "false", "yes", "no", "on", "off", "y", "n", "null", "none", "~"}
_UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def _raw_safe(char: str) -> bool:
    """May `char` stand unescaped in a YAML scalar (printable, not a line break)?"""
    if char in "\t\n":
        return False
    return unicodedata.category(char) not in _UNSAFE_CATEGORIES and char != "\ufeff"


def _quoted(text: str) -> str:
    out = []
    for char in text:
        if char == '"':
            out.append('\\"')
        elif char == "\\":
            out.append("\\\\")
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif _raw_safe(char):
            out.append(char)
        elif ord(char) <= 0xFF:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return '"' + "".join(out) + '"'


def _scalar(value: Any) -> str:
    """One YAML scalar on one line; strings are quoted unless they can only read as themselves."""
    if value is None:
        return "null"
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        number = float(value)
        if math.isnan(number):
            return ".nan"
        if math.isinf(number):
            return ".inf" if number > 0 else "-.inf"
        text = repr(number)
        mantissa, e, exponent = text.partition("e")
        # YAML 1.1 floats need a dot in the mantissa and a sign in the exponent (1.0e-05)
        if e and "." not in mantissa:
            text = f"{mantissa}.0e{exponent}"
        return text
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in _RESERVED:
        return text
    return _quoted(text)


def _is_number(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, np.bool_, np.integer,
                                                np.floating))


def _literal(text: str) -> str | None:
    """The block-scalar header (``|`` or ``|-``) `text` can be written with, or None."""
    if "\n" not in text.rstrip("\n") or "\r" in text:
        return None
    if text.endswith("\n\n"):
        return None
    body = text[:-1] if text.endswith("\n") else text
    lines = body.split("\n")
    first = next((line for line in lines if line), "")
    if first.startswith(" ") or any(line != line.rstrip() for line in lines):
        return None
    if not all(_raw_safe(char) for line in lines for char in line):
        return None
    return "|" if text.endswith("\n") else "|-"


def _value_lines(head: str, value: Any, indent: int) -> list[str]:
    """Lines for ``head`` (``key:`` or ``-``, already indented) followed by `value`."""
    pad = " " * (indent + 2)
    if isinstance(value, Mapping):
        if not value:
            return [f"{head} {{}}"]
        return [head] + _mapping_lines(value, indent + 2)
    if isinstance(value, (list, tuple, np.ndarray)):
        value = list(value)
        if not value:
            return [f"{head} []"]
        if len(value) <= 16 and all(_is_number(v) for v in value):  # shapes, epochs, ranges
            return [f"{head} [{', '.join(_scalar(v) for v in value)}]"]
        # a list under a key stands at the key's indentation (the hub's style); under "-" deeper
        return [head] + _sequence_lines(value, indent if head.endswith(":") else indent + 2)
    if isinstance(value, str):
        style = _literal(value)
        if style is not None:
            body = value[:-1] if value.endswith("\n") else value
            return [f"{head} {style}"] + [(pad + line) if line else "" for line in body.split("\n")]
    return [f"{head} {_scalar(value)}"]


def _mapping_lines(mapping: Mapping, indent: int) -> list[str]:
    lines = []
    for key, value in mapping.items():
        lines += _value_lines(" " * indent + _scalar(str(key)) + ":", value, indent)
    return lines


def _sequence_lines(items: Sequence, indent: int) -> list[str]:
    lines = []
    pad = " " * indent
    for item in items:
        if isinstance(item, Mapping) and item:
            inner = _mapping_lines(item, indent + 2)
            lines += [pad + "- " + inner[0][indent + 2:]] + inner[1:]
        else:
            lines += _value_lines(pad + "-", item, indent)
    return lines


def to_yaml(data: Mapping[str, Any]) -> str:
    """A mapping of mappings, lists and scalars as block-style YAML (``"\\n"``-terminated)."""
    if not isinstance(data, Mapping):
        raise TypeError(f"to_yaml writes a mapping, got {type(data).__name__}")
    return "\n".join(_mapping_lines(data, 0)) + "\n"


# ---------------------------------------------------------------------------- card contents
def size_category(rows: int) -> str:
    """The hub's size category of a dataset of `rows` examples."""
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
              (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"),
              (1_000_000_000, "100M<n<1B")]
    for bound, name in bounds:
        if rows < bound:
            return name
    return "n>1B"


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: v.item() if isinstance(v, np.generic)
                                 else list(v) if isinstance(v, (tuple, set)) else str(v)))


def _recipe_name(manifest: Mapping) -> str:
    recipe = manifest.get("recipe")
    return str(recipe.get("name", "unknown")) if isinstance(recipe, Mapping) else "unknown"


def _dataset_name(manifest: Mapping) -> str:
    dataset = manifest.get("dataset")
    return str(dataset.get("name", "unknown")) if isinstance(dataset, Mapping) else "unknown"


def default_pretty_name(zoo) -> str:
    arch = zoo.manifest["architecture"]["name"]
    kind = "generated" if zoo.manifest.get("generated") else "trained"
    return (f"wsl zoo {_recipe_name(zoo.manifest)}: {len(zoo.model_ids)} {kind} {arch} networks "
            f"on {_dataset_name(zoo.manifest)}")


def citation(zoo, pretty_name: str) -> str:
    """BibTeX for the user to complete: the zoo itself, then the paper its recipe follows."""
    created = str(zoo.manifest.get("provenance", {}).get("created", ""))
    year = created[:4] if created[:4].isdigit() else str(datetime.date.today().year)
    recipe = _recipe_name(zoo.manifest)
    key = re.sub(r"[^a-z0-9]+", "_", f"wsl zoo {recipe} {year}".lower()).strip("_")
    title = pretty_name.replace("{", "(").replace("}", ")")
    parts = ["% Edit this entry (authors, where it is published) before you share the zoo.",
             f"@misc{{{key},\n"
             f"  title        = {{{title}}},\n"
             f"  author       = {{TODO: your names}},\n"
             f"  year         = {{{year}}},\n"
             f"  howpublished = {{TODO: where the zoo can be downloaded}},\n"
             f"  note         = {{Model zoo built with wsl (weight-space learning in JAX), "
             f"recipe {recipe}}}\n}}"]
    source = RECIPE_SOURCES.get(recipe)
    if source is not None:
        parts += [f"% The recipe follows {source[0]}:", _BIBTEX[source[1]]]
    return "\n".join(parts) + "\n"


def _last_rows(zoo) -> dict[str, np.ndarray]:
    return zoo.filter(epoch="last").metrics


def _accuracy_column(metrics: Mapping[str, np.ndarray]) -> str | None:
    for column in ("test_acc", "val_acc", "train_acc"):
        if column in metrics and metrics[column].dtype.kind in "biuf":
            return column
    return None


def _varies(values: np.ndarray) -> bool:
    if values.dtype.kind in "iuf":
        finite = values[np.isfinite(values.astype(np.float64))]
        return len(np.unique(finite)) > 1
    return 1 < len(np.unique(values.astype(str))) <= 12


def scatter_columns(zoo) -> tuple[str | None, str | None]:
    """The hyperparameter for the scatter's x axis and the one that colours it (None: none
    varies)."""
    last = _last_rows(zoo)
    settings = [c for c in zoo.manifest["columns"] if c not in _MEASURED and _varies(last[c])]
    numeric = [c for c in settings if last[c].dtype.kind in "iuf"]
    preferred = ([c for c in _SCATTER_X if c in numeric]
                 + [c for c in numeric if c not in _SCATTER_X])
    x = preferred[0] if preferred else None
    others = [c for c in settings if c != x]
    color = next((c for c in _SCATTER_COLOR if c in others), others[0] if others else None)
    return x, color


_LOG_UNIFORM = ("lr", "weight_decay", "init_scale")  # sampled log-uniformly by the recipes


def _log_scale(values: np.ndarray, column: str = "") -> bool:
    values = values[np.isfinite(values)]
    if not len(values) or values.min() <= 0 or values.max() == values.min():
        return False
    return column in _LOG_UNIFORM or values.max() / values.min() >= 20


@dataclasses.dataclass
class Figure:
    path: str  # relative to the card
    caption: str


def write_figures(zoo, folder: Path) -> list[Figure]:
    """The accuracy histogram and the hyperparameter scatter as PNGs under ``folder/figures``."""
    from matplotlib.figure import Figure as MplFigure

    last = _last_rows(zoo)
    accuracy = _accuracy_column(last)
    if accuracy is None:
        return []
    (folder / FIGURES).mkdir(parents=True, exist_ok=True)
    values = last[accuracy].astype(np.float64)
    finite = values[np.isfinite(values)]
    name = accuracy.replace("_acc", "")
    figures = []

    fig = MplFigure(figsize=(6, 4))
    ax = fig.add_subplot()
    lo, hi = min(0.0, finite.min(initial=0.0)), max(1.0, finite.max(initial=1.0))
    ax.hist(finite, bins=30, range=(lo, hi), color="#4C72B0")
    ax.set_xlabel(f"{name} accuracy at the last checkpoint")
    ax.set_ylabel("models")
    ax.yaxis.get_major_locator().set_params(integer=True)
    dropped = len(values) - len(finite)
    ax.set_title(f"{len(finite)} models" + (f" ({dropped} not finite, left out)" if dropped
                                            else ""))
    fig.tight_layout()
    fig.savefig(folder / HISTOGRAM_FIGURE, dpi=100)
    figures.append(Figure(HISTOGRAM_FIGURE, f"{name} accuracy at each model's last checkpoint "
                                            f"({len(finite)} models)"))

    x, color = scatter_columns(zoo)
    if x is None:
        return figures
    xs = last[x].astype(np.float64)
    fig = MplFigure(figsize=(6.5, 4))
    ax = fig.add_subplot()
    caption = f"{x} against {name} accuracy at the last checkpoint"
    if color is None:
        ax.scatter(xs, values, s=12, alpha=0.7)
    elif last[color].dtype.kind in "iuf":
        from matplotlib.colors import LogNorm, Normalize

        shades = last[color].astype(np.float64)
        norm = LogNorm() if _log_scale(shades, color) else Normalize()
        points = ax.scatter(xs, values, c=shades, s=12, alpha=0.8, cmap="viridis", norm=norm)
        fig.colorbar(points, ax=ax, label=color)
        caption += f", coloured by {color}"
    else:
        labels = last[color].astype(str)
        for label in np.unique(labels):
            pick = labels == label
            ax.scatter(xs[pick], values[pick], s=12, alpha=0.8, label=str(label))
        ax.legend(title=color, fontsize="small")
        caption += f", coloured by {color}"
    if _log_scale(xs, x):
        ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(f"{name} accuracy")
    fig.tight_layout()
    fig.savefig(folder / SCATTER_FIGURE, dpi=100)
    figures.append(Figure(SCATTER_FIGURE, caption))
    return figures


def _column_summary(values: np.ndarray) -> str:
    if values.dtype.kind == "b":
        return f"{int(values.sum())} true"
    if values.dtype.kind in "iuf":
        v = values.astype(np.float64)
        v = v[np.isfinite(v)]
        if not len(v):
            return "none finite"
        return " / ".join(f"{s:.4g}" for s in (v.min(), np.median(v), v.max()))
    names = np.unique(values.astype(str))
    shown = ", ".join(names[:6].tolist())
    return shown + (f", … ({len(names)} values)" if len(names) > 6 else "")


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def card_metadata(zoo, *, license: str = LICENSE_UNKNOWN, pretty_name: str | None = None,
                  export: Mapping[str, Any] | None = None) -> dict:
    """The front matter: the hub's fields, then ``wsl`` (what the zoo is) and ``citation``."""
    manifest = zoo.manifest
    arch = manifest["architecture"]
    pretty_name = pretty_name or default_pretty_name(zoo)
    epochs = np.unique(zoo.metrics["epoch"]).tolist()
    types, meanings = zoo.column_types, zoo.column_meanings
    columns = {c: {"type": types.get(c, "str"), "meaning": meanings.get(c) or ""}
               for c in zoo.columns}
    tags = list(dict.fromkeys(["weight-space-learning", "model-zoo", "wsl", arch["name"],
                               _dataset_name(manifest)]))
    meta: dict[str, Any] = {
        "pretty_name": pretty_name,
        "license": license,
        "tags": tags,
        "task_categories": ["tabular-regression"],
        "size_categories": [size_category(len(zoo))],
    }
    if export is not None:
        meta["configs"] = [{"config_name": "default",
                            "data_files": [{"split": "train", "path": export["metrics"]}]}]
    source = RECIPE_SOURCES.get(_recipe_name(manifest))
    meta["wsl"] = _jsonable({
        "schema_version": manifest.get("schema_version"),
        "architecture": {"name": arch["name"], "config": arch.get("config", {})},
        "parameters": zoo.weight_space.num_params,
        "tensors": {t.path: list(t.shape) for t in zoo.weight_space.tensors},
        "dataset": manifest.get("dataset", {}),
        "recipe": manifest.get("recipe", {}),
        **({"recipe_source": source[0]} if source else {}),
        "generated": bool(manifest.get("generated", False)),
        "models": len(zoo.model_ids),
        "rows": len(zoo),
        "checkpoints": epochs,
        "columns": columns,
        "provenance": manifest.get("provenance", {}),
        **({"files": dict(export)} if export is not None else {}),
    })
    meta["citation"] = citation(zoo, pretty_name)
    return meta


def card_markdown(zoo, meta: Mapping[str, Any], figures: Sequence[Figure],
                  export: Mapping[str, Any] | None = None) -> str:
    """README.md: the front matter, then what a reader needs, in prose and tables."""
    wsl = meta["wsl"]
    arch, recipe, dataset = wsl["architecture"], wsl["recipe"], wsl["dataset"]
    last = _last_rows(zoo)
    kind = "generated" if wsl["generated"] else "trained"
    lines = ["---", to_yaml(meta).rstrip("\n"), "---", "", f"# {meta['pretty_name']}", "",
             f"{wsl['models']:,} {kind} `{arch['name']}` networks ({wsl['parameters']:,} "
             f"parameters each) on `{dataset.get('name', 'unknown')}`, from the wsl recipe "
             f"`{recipe.get('name', 'unknown')}`"
             + (f", which follows {wsl['recipe_source']}" if wsl.get("recipe_source") else "")
             + f". {wsl['rows']:,} rows: one per (model, checkpoint), checkpoints at epochs "
             f"{wsl['checkpoints']}. Every row holds the network's weights and its metrics "
             f"(hyperparameters, losses and accuracies).", ""]
    if meta["license"] == LICENSE_UNKNOWN:
        lines += ["> **License: unknown.** No license was given (`--license ID` of `wsl zoo "
                  "card` or `wsl zoo export --all`); set one before sharing this zoo.", ""]
    for figure in figures:
        lines += [f"![{figure.caption}]({figure.path})", ""]
    if export is not None:
        reader = "read_parquet" if export["metrics"].endswith(".parquet") else "read_csv"
        lines += ["## Files", "", "| file | what |", "|---|---|",
                  f"| `{export['manifest']}` | the zoo's manifest (architecture, weight space, "
                  f"dataset, recipe, columns, provenance) and the checksum of every file here |",
                  f"| `{export['metrics']}` | the metrics table, one row per (model, checkpoint), "
                  f"in the weights' row order |"]
        for file in export["weights"]:
            lines.append(f"| `{file}` | one shard: every tensor stacked over its rows, named by "
                         f"its path (safetensors metadata: architecture, weight space, rows) |")
        lines += [f"| `{CARD}`, `{FIGURES}/` | this card |", "",
                  "Read it back as a wsl zoo (checksums verified, weights and metrics identical "
                  "to the zoo exported):", "", "```bash",
                  "wsl zoo import --format wsl-export THIS_FOLDER --out zoo", "```", "",
                  "or without wsl:", "", "```python",
                  "from safetensors.numpy import load_file",
                  f"shard = load_file(\"{export['weights'][0]}\")   "
                  f"# {{tensor path: (rows, *shape)}}",
                  "import pandas as pd",
                  f"metrics = pd.{reader}(\"{export['metrics']}\")   # same row order",
                  "```", ""]
    lines += ["## Architecture", "", f"`{arch['name']}` with config "
              f"`{json.dumps(arch['config'], sort_keys=True)}`: {wsl['parameters']:,} parameters "
              f"in {len(wsl['tensors'])} tensors.", "", "| tensor | shape |", "|---|---|"]
    lines += [f"| `{path}` | {tuple(shape)} |" for path, shape in wsl["tensors"].items()]
    lines += ["", "## Dataset", "", "```json", json.dumps(dataset, indent=2), "```", "",
              "## Recipe", ""]
    description = recipe.get("config", {}).get("description") if isinstance(
        recipe.get("config"), Mapping) else None
    if description:
        lines += [f"`{recipe.get('name')}`: {description}", ""]
    lines += ["```json", json.dumps(recipe, indent=2), "```", "",
              "## Columns", "", f"At each model's last checkpoint ({wsl['models']} models).", "",
              "| column | type | meaning | min / median / max (or values) |", "|---|---|---|---|"]
    for name, info in wsl["columns"].items():
        lines.append(f"| `{name}` | {info['type']} | {_md(info['meaning'])} | "
                     f"{_md(_column_summary(last[name]))} |")
    lines += ["", "## Provenance", "", "```json", json.dumps(wsl["provenance"], indent=2), "```",
              "", "## License", "",
              (f"`{meta['license']}`" if meta["license"] != LICENSE_UNKNOWN
               else "Unknown: none was given when this card was written."), "",
              "## Citation", "", "```bibtex", meta["citation"].rstrip("\n"), "```", ""]
    return "\n".join(lines)


@dataclasses.dataclass
class CardResult:
    """What `write_card` wrote."""

    folder: Path
    card: Path
    figures: list[Figure]
    license: str


def write_card(zoo, out: str | os.PathLike, *, license: str = LICENSE_UNKNOWN,
               pretty_name: str | None = None, export: Mapping[str, Any] | None = None,
               force: bool = False, checked: bool = False) -> CardResult:
    """Write ``out/README.md`` and ``out/figures/*.png`` for `zoo` (a `Zoo` or its path).

    `out` is checked first (`wsl.outputs.check_output_dir`: never a zoo or a folder inside one);
    a folder that holds anything is refused unless `force` (then only the card's own files are
    replaced). `export` describes the files of a whole-zoo export the card sits beside
    (``manifest``, ``metrics``, ``weights``); `checked` says the caller checked `out` already.
    """
    from wsl.zoos.store import Zoo

    if not isinstance(license, str) or not license.strip() or "\n" in license:
        raise ZooError(f"license must be one word such as cc-by-4.0 or mit, got {license!r}")
    if pretty_name is not None and (not pretty_name.strip() or "\n" in pretty_name):
        raise ZooError(f"the card's name must be one non-empty line, got {pretty_name!r}")
    out = Path(out)
    if not checked:
        check_output_dir(out)
        if out.is_dir() and any(out.iterdir()) and not force:
            raise ZooError(f"--out {out} exists and is not empty; write the card into a new "
                           f"folder, or pass --force to replace a card written there before")
    zoo = zoo if isinstance(zoo, Zoo) else Zoo.open(zoo)
    if not zoo.is_whole:
        raise ZooError(f"{zoo.path}: a card describes a whole zoo, not a view of "
                       f"{len(zoo)} rows; pass the zoo itself")
    out.mkdir(parents=True, exist_ok=True)
    figures = write_figures(zoo, out)
    meta = card_metadata(zoo, license=license, pretty_name=pretty_name, export=export)
    text = card_markdown(zoo, meta, figures, export)
    write_atomic(out / CARD, lambda file: file.write(text.encode("utf-8")))
    return CardResult(out, out / CARD, figures, license)


def read_front_matter(path: str | os.PathLike) -> str:
    """The YAML between the ``---`` lines at the top of a card (raises `ZooError` without)."""
    text = Path(path).read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        raise ZooError(f"{path}: no front matter (the first line is not ---)")
    end = text.find("\n---\n", 3)
    if end < 0:
        raise ZooError(f"{path}: the front matter has no closing --- line")
    return text[4:end + 1]


__all__ = ["CARD", "CardResult", "card_markdown", "card_metadata", "citation", "read_front_matter",
           "size_category", "to_yaml", "write_card", "write_figures"]

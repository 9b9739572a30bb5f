"""`wsl zoo analyze`: loss-landscape, representation and spectral properties as zoo columns.

Metrics (each adds the columns listed in `METRICS`):

* ``hessian`` — top eigenvalue (Lanczos) and trace (Hutch++) of the Hessian of the training loss
  on a fixed batch (`wsl.eval.hessian`);
* ``mc`` — mode connectivity to a partner of the same grid cell (same hyperparameters, another
  seed), after weight matching: loss barrier along the straight path and along a quadratic Bézier
  curve whose control point is trained to lower the loss along it (Garipov et al. 2018);
* ``cka`` — linear CKA of the representation that enters the last layer, mean over the model's
  cell and to one reference model (`wsl.eval.cka`);
* ``spectral`` / ``farms`` — per-layer heavy-tail exponent α of WᵀW (WeightWatcher's fit), stable
  rank, spectral norm; FARMS α on square sub-blocks (`wsl.eval.spectral`).

Work is vectorised: the models of one shard (and one activation) are one population, `jax.vmap`ped
in chunks of `AnalyzeSettings.batch_models`. The unit of resumption is (metric, shard): each
finished unit is a small JSON file under ``.analysis-parts/`` in the zoo, so an interrupted run
resumes where it stopped; once every unit is done the columns are written beside the metrics
table (`wsl.zoos.store.write_analysis`) and the parts are removed. Rows that already have a value
are never recomputed; the metrics table and the weights are never touched.

Phase zoos (`width` column) store narrow networks padded with zeros. Each is run as the narrow
network it is wherever the architecture's config can say so (`narrowed`: MLP widths, CNN
channels), so padding costs nothing; otherwise the padded network runs with its width mask: the
Hessian restricted to the model's own units, Bézier control points moving only units one of the
two endpoints uses. Spectra are always taken on the model's own sub-matrices.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from wsl.align import weight_matching
from wsl.errors import WslError
from wsl.eval import cka as cka_lib
from wsl.eval import hessian as hessian_lib
from wsl.eval import spectral as spectral_lib
from wsl.eval.errors import EvaluationError
from wsl.eval.lmc import loss_barrier
from wsl.mesh import axis_size, round_up
from wsl.weight_space import nest_paths
from wsl.zoos.architectures import Architecture, narrowed
from wsl.zoos.fast_conv import population_apply
from wsl.zoos.population import population_mesh, width_masks
from wsl.zoos.store import Zoo, write_analysis

PARTS = ".analysis-parts"
# The hyperparameter columns that define a grid cell (with the epoch): models that differ only in
# the others (model id, seed) are seeds of one cell.
CELL_COLUMNS = ("lr", "weight_decay", "init_scale", "bias_init", "dropout", "train_fraction",
                "activation", "optimizer", "init", "width")


@dataclasses.dataclass(frozen=True)
class AnalyzeSettings:
    """How the properties are measured; recorded in the manifest beside the columns."""

    examples: int = 512  # the fixed training batch of the loss-based metrics and of CKA
    data_seed: int = 0  # which examples: the first `examples` of a seeded permutation of train
    lanczos_iterations: int = 32
    trace_samples: int = 48  # Hessian-vector products of the Hutch++ trace estimate
    bezier_steps: int = 100
    bezier_lr: float = 0.01
    bezier_points: int = 4  # curve points (t ~ U(0, 1)) averaged per training step
    lambdas: int = 11  # points on each path where the barrier is read (0 and 1 included)
    farms_block: int = 0  # FARMS block size; 0 = the library default
    batch_models: int = 64  # models per vmapped call (memory bound)
    seed: int = 0  # Lanczos / Hutch++ / Bézier randomness, with each model's id folded in

    def __post_init__(self):
        for field in ("examples", "lanczos_iterations", "trace_samples", "bezier_steps",
                      "bezier_points", "batch_models"):
            if getattr(self, field) < 1:
                raise EvaluationError(f"{field} must be >= 1, got {getattr(self, field)}")
        if self.lambdas < 3:
            raise EvaluationError(f"lambdas must be >= 3 points, got {self.lambdas}")
        if not self.bezier_lr > 0:
            raise EvaluationError(f"bezier_lr must be > 0, got {self.bezier_lr}")


@dataclasses.dataclass(frozen=True)
class Metric:
    columns: Mapping[str, str]  # column -> meaning
    needs_data: bool
    needs_cells: bool
    settings: tuple[str, ...]  # the AnalyzeSettings fields its numbers depend on


METRICS: dict[str, Metric] = {
    "hessian": Metric({
        "hessian_top_eigenvalue": "largest eigenvalue of the Hessian of the mean training "
                                  "cross-entropy on the analysis batch (Lanczos)",
        "hessian_trace": "trace of that Hessian (Hutch++ estimate)"},
        True, False, ("examples", "data_seed", "lanczos_iterations", "trace_samples", "seed")),
    "mc": Metric({
        "mc_linear_barrier": "loss barrier on the straight path to a partner of the same cell "
                             "(another seed), after weight matching",
        "mc_bezier_barrier": "loss barrier along a trained quadratic Bezier curve to the same "
                             "aligned partner",
        "mc_partner": "model id of that partner"},
        True, True, ("examples", "data_seed", "bezier_steps", "bezier_lr", "bezier_points",
                     "lambdas", "seed")),
    "cka": Metric({
        "cka_cell": "mean linear CKA of the last layer's input with the other models of the "
                    "same cell (same epoch)",
        "cka_reference": "linear CKA of the last layer's input with the reference model (highest "
                         "val_acc at that epoch)"},
        True, True, ("examples", "data_seed")),
    "spectral": Metric({
        "spectral_alpha": "mean over layers of the power-law exponent alpha of the ESD of W^T W "
                          "(WeightWatcher's fit)",
        "stable_rank": "mean over layers of ||W||_F^2 / ||W||_2^2",
        "log_spectral_norm": "mean over layers of log10 of the largest eigenvalue of W^T W"},
        False, False, ()),
    "farms": Metric({
        "farms_alpha": "mean over layers of alpha fitted to the pooled ESDs of square sub-blocks "
                       "of W (FARMS)"},
        False, False, ("farms_block",)),
}


# ------------------------------------------------------------------------------ the analysis
@dataclasses.dataclass
class AnalyzeReport:
    metrics: list[str]
    rows: int  # rows selected
    computed_units: int  # (metric, shard) units computed in this run
    reused_units: int  # units found finished from an interrupted run
    skipped: dict[str, int]  # metric -> selected rows that already had values
    zoo: Zoo | None = None


def parse_metrics(text: str | Sequence[str]) -> list[str]:
    names = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise EvaluationError(f"unknown metric {unknown[0] if unknown else '(none given)'!r}; "
                              f"metrics are {', '.join(METRICS)}")
    return list(dict.fromkeys(names))


def analyze_zoo(path: str | os.PathLike, metrics: str | Sequence[str] = "hessian",
                epoch: int | str = "last", settings: AnalyzeSettings = AnalyzeSettings(), *,
                progress: bool = True, on_unit: Callable[[str, int], None] | None = None
                ) -> AnalyzeReport:
    """Add `metrics`' columns for the rows at `epoch` (an int, ``"last"`` or ``"all"``).

    `on_unit(metric, shard)` runs after each unit is saved (a test raises there to simulate an
    interrupted run).
    """
    names = parse_metrics(metrics)
    zoo = Zoo.open(path)
    view = zoo if epoch == "all" else zoo.filter(epoch=_epoch_arg(epoch))
    if len(view) == 0:
        raise EvaluationError(f"{zoo.path}: no rows at epoch {epoch!r}; epochs are "
                              f"{sorted(set(zoo.metrics['epoch'].tolist()))}")
    context = _Context(zoo, settings)
    for name in names:
        context.check(name)
    rows = view.global_rows
    todo, skipped = {}, {}
    for name in names:
        have = np.ones(len(rows), bool)
        for c in METRICS[name].columns:
            have &= zoo.analysed(c)[rows]
        todo[name] = rows[~have]
        skipped[name] = int(have.sum())
    units = [(name, shard, part) for name in names
             for shard, part in _by_shard(zoo, todo[name])]
    computed = reused = 0
    results: dict[str, dict[str, np.ndarray]] = {
        name: {c: np.full(len(zoo._table["model"]), np.nan) for c in METRICS[name].columns}
        for name in names}
    bar = tqdm(total=sum(len(part) for _, _, part in units), unit="model", disable=not progress,
               desc="analyze")
    try:
        for name, shard, part in units:
            file = _part_file(zoo, name, shard, part, settings)
            values = _read_part(file, part, METRICS[name].columns)
            if values is None:
                values = context.compute(name, part)
                _write_part(file, part, values)
                computed += 1
            else:
                reused += 1
            for c, v in values.items():
                results[name][c][part] = v
            bar.update(len(part))
            if on_unit is not None:
                on_unit(name, shard)
    except KeyboardInterrupt as err:
        raise KeyboardInterrupt(f"analysis stopped ({err or 'interrupted'}); {computed + reused} "
                                f"of {len(units)} shard units are saved in {zoo.path / PARTS} — "
                                f"rerun the same command to resume") from err
    finally:
        bar.close()
    how = {name: context.describe(name) for name in names if len(todo[name])}
    if how:
        columns, analysed = {}, {}
        for name in names:
            if len(todo[name]):
                mask = np.zeros(len(zoo._table["model"]), bool)
                mask[todo[name]] = True
                columns.update(results[name])
                analysed.update({c: mask for c in results[name]})
        meanings = {c: m for name in names for c, m in METRICS[name].columns.items()}
        zoo = write_analysis(zoo.path, columns, meanings, how, analysed)
    for name in names:
        shutil.rmtree(_parts_dir(zoo, name, settings), ignore_errors=True)
    parts = zoo.path / PARTS
    if parts.is_dir() and not any(parts.iterdir()):
        parts.rmdir()
    return AnalyzeReport(names, len(rows), computed, reused, skipped, zoo)


def _epoch_arg(epoch: int | str) -> int | str:
    if isinstance(epoch, str) and epoch != "last":
        try:
            return int(epoch)
        except ValueError:
            raise EvaluationError(f"--epoch must be an epoch number, 'last' or 'all'; got "
                                  f"{epoch!r}") from None
    return epoch


def _by_shard(zoo: Zoo, rows: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    starts = zoo._storage.starts
    shard_of = np.searchsorted(starts, rows, side="right") - 1
    for shard in np.unique(shard_of):
        yield int(shard), np.sort(rows[shard_of == shard])


# ------------------------------------------------------------------------- resumable parts
def _settings_hash(name: str, settings: AnalyzeSettings) -> str:
    used = {f: getattr(settings, f) for f in METRICS[name].settings}
    return hashlib.sha256(json.dumps([name, used], sort_keys=True).encode()).hexdigest()[:10]


def _parts_dir(zoo: Zoo, name: str, settings: AnalyzeSettings) -> Path:
    return zoo.path / PARTS / f"{name}-{_settings_hash(name, settings)}"


def _part_file(zoo: Zoo, name: str, shard: int, rows: np.ndarray,
               settings: AnalyzeSettings) -> Path:
    digest = hashlib.sha256(np.asarray(rows, np.int64).tobytes()).hexdigest()[:10]
    return _parts_dir(zoo, name, settings) / f"{shard:05d}-{digest}.json"


def _read_part(file: Path, rows: np.ndarray, columns) -> dict[str, np.ndarray] | None:
    """A finished unit's values, or None when it is missing or unusable (then recomputed)."""
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        if data["rows"] != rows.tolist() or set(data["columns"]) != set(columns):
            return None
        return {c: np.array([np.nan if v is None else v for v in data["columns"][c]], np.float64)
                for c in columns}
    except (ValueError, KeyError, TypeError):
        return None  # a damaged part is derived data: compute it again


def _write_part(file: Path, rows: np.ndarray, values: Mapping[str, np.ndarray]) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    data = {"rows": rows.tolist(),
            "columns": {c: [None if not np.isfinite(x) else float(x) for x in np.asarray(v)]
                        for c, v in values.items()}}
    tmp = file.with_name(f".{file.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, file)


# -------------------------------------------------------------------------------- context
class _Context:
    """What the metrics share for one zoo: data batch, masks, cells, compiled programs."""

    def __init__(self, zoo: Zoo, settings: AnalyzeSettings):
        self.zoo, self.settings = zoo, settings
        self.table = zoo._table
        self._data = None
        self._cells = None
        self._spectra_cache: tuple[bytes | None, dict] = (None, {})
        self._narrowed: dict[tuple[Architecture, int], Architecture] = {}
        # The model axis is sharded as the population trainer shards it.
        self.mesh = population_mesh()

    # ---------------------------------------------------------------- checks
    def check(self, name: str) -> None:
        metric = METRICS[name]
        if metric.needs_data:
            try:
                self.data()
            except WslError as err:
                raise EvaluationError(f"metric {name!r} needs the zoo's training data, which "
                                      f"cannot be loaded: {err}") from err
        if metric.needs_cells:
            cells = self.cells()
            if not any(len(members) > 1 for members in cells.values()):
                raise EvaluationError(
                    f"metric {name!r} compares models of one grid cell (every hyperparameter "
                    f"equal but the seed); no two models of {self.zoo.path.name} share one — "
                    f"build a grid recipe with several seeds (e.g. phase-mlp-mnist1d)")
        if name in ("spectral", "farms") and not _has_spectra(self.zoo.weight_space, {}):
            raise EvaluationError(
                f"metric {name!r} fits the spectra of weight matrices, and no kernel of this "
                f"zoo's {self.zoo.manifest['architecture']['name']!r} networks has "
                f"{spectral_lib.MIN_EVALS} or more eigenvalues")
        if name in ("hessian", "mc", "cka"):
            try:
                self.zoo.architecture
            except WslError as err:
                raise EvaluationError(f"metric {name!r} runs the networks: {err}") from err

    def describe(self, name: str) -> dict:
        how: dict[str, Any] = {f: getattr(self.settings, f) for f in METRICS[name].settings}
        if METRICS[name].needs_data:
            idx = self.data()[2]
            how["data"] = {"split": "train", "examples": int(len(idx)),
                           "seed": self.settings.data_seed,
                           "indices_sha256": hashlib.sha256(idx.astype(np.int64).tobytes())
                           .hexdigest(),
                           "rule": "the first `examples` of numpy default_rng(seed)."
                                   "permutation(len(train))"}
        if name == "cka":
            how["reference"] = ("per epoch, the model with the highest val_acc at that epoch "
                                "(finite weights)")
        if name == "mc":
            how["partner"] = ("the next seed of the same cell (cyclic in model id); partner "
                              "weight-matched to the model")
        return how

    # ---------------------------------------------------------------- shared pieces
    def data(self):
        if self._data is None:
            dataset = self.zoo.dataset()
            n = len(dataset.y_train)
            idx = np.sort(np.random.default_rng(self.settings.data_seed).permutation(n)
                          [:min(self.settings.examples, n)])
            self._data = (np.asarray(dataset.x_train[idx], np.float32),
                          np.asarray(dataset.y_train[idx], np.int32), idx)
        return self._data

    def cells(self) -> dict[tuple, np.ndarray]:
        """{cell key: global rows}, the key including the epoch."""
        if self._cells is None:
            keys = [c for c in CELL_COLUMNS if c in self.table] + ["epoch"]
            cells: dict[tuple, list[int]] = {}
            for r in range(len(self.table["model"])):
                cells.setdefault(tuple(self.table[c][r].item() for c in keys), []).append(r)
            self._cells = {k: np.array(sorted(v, key=lambda r: self.table["model"][r]))
                           for k, v in cells.items()}
        return self._cells

    def cell_of(self, row: int) -> np.ndarray:
        keys = [c for c in CELL_COLUMNS if c in self.table] + ["epoch"]
        return self.cells()[tuple(self.table[c][row].item() for c in keys)]

    def masks(self, arch: Architecture, rows: np.ndarray):
        """Stacked width masks of `rows` run by `arch`, or None where nothing is padded (a zoo
        without a width column, or a narrowed architecture)."""
        if "width" not in self.table or arch.weight_space != self.zoo.weight_space:
            return None
        return width_masks(arch, self.table["width"][rows].astype(int))

    def padded(self, rows: np.ndarray) -> np.ndarray:
        """`rows` repeated at the end up to a multiple of the device count (results of the
        repeats are dropped)."""
        size = round_up(len(rows), axis_size(self.mesh))
        return np.concatenate([rows, np.repeat(rows[:1], size - len(rows))])

    def spread(self, tree):
        """Place a stacked tree with its model axis sharded over the devices."""
        return jax.device_put(tree, NamedSharding(self.mesh, P(self.mesh.axis_names[0])))

    def replicate(self, tree):
        return jax.device_put(tree, NamedSharding(self.mesh, P()))

    def groups(self, rows: np.ndarray) -> Iterator[tuple[Architecture, np.ndarray]]:
        """(architecture, rows) chunks of at most `batch_models` rows: one activation and, in a
        phase zoo, one width each — run by the narrow architecture when its config can say it
        (`narrowed`), so that padded units cost nothing."""
        archs = [self.zoo.architecture_of(int(r)) for r in rows]
        widths = (self.table["width"][rows].astype(int) if "width" in self.table
                  else np.zeros(len(rows), int))
        keys = [(a.config.get("activation", ""), int(w)) for a, w in zip(archs, widths)]
        step = self.settings.batch_models
        for key in dict.fromkeys(keys):
            pick = np.array([i for i, k in enumerate(keys) if k == key])
            arch = archs[pick[0]]
            if key[1]:
                if (arch, key[1]) not in self._narrowed:
                    self._narrowed[(arch, key[1])] = narrowed(arch, key[1]) or arch
                arch = self._narrowed[(arch, key[1])]
            for start in range(0, len(pick), step):
                yield arch, rows[pick[start:start + step]]

    def params(self, rows: np.ndarray, arch: Architecture | None = None) -> dict:
        """Stacked weights of `rows`; cut to `arch`'s shapes (a narrowed architecture keeps the
        first units of every axis) when it is given."""
        weights = self.zoo._view(rows).weights(np.arange(len(rows)))
        if arch is None or arch.weight_space == self.zoo.weight_space:
            return jax.tree.map(lambda a: np.asarray(a, np.float32), weights)
        flat = self.zoo.weight_space.as_flat_dict(weights)
        return nest_paths({t.path: np.asarray(flat[t.path][(slice(None),) + tuple(
            slice(0, n) for n in t.shape)], np.float32) for t in arch.weight_space.tensors})

    def keys(self, rows: np.ndarray) -> jax.Array:
        base = jax.random.key(self.settings.seed)
        return jax.vmap(lambda m: jax.random.fold_in(base, m))(
            jnp.asarray(self.table["model"][rows], jnp.uint32))

    def finite(self, rows: np.ndarray) -> np.ndarray:
        return self.zoo._storage.finite(rows)

    # ---------------------------------------------------------------- metrics
    def compute(self, name: str, rows: np.ndarray) -> dict[str, np.ndarray]:
        out = {c: np.full(len(rows), np.nan) for c in METRICS[name].columns}
        ok = self.finite(rows)
        if not ok.any():
            return out
        values = getattr(self, f"_{name}")(rows[ok])
        for c, v in values.items():
            out[c][ok] = v
        return out

    def _hessian(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        x, y = (self.replicate(a) for a in self.data()[:2])
        top, trace = np.empty(len(rows)), np.empty(len(rows))
        where = {r: i for i, r in enumerate(rows)}
        for arch, chunk in self.groups(rows):
            full = self.padded(chunk)
            masks = self.masks(arch, full)
            program = hessian_program(arch, self.settings, masks is not None)
            t, s = program(self.spread(self.params(full, arch)),
                           self.spread(masks) if masks is not None else 0, x, y,
                           self.spread(self.keys(full)))
            idx = [where[r] for r in chunk]
            top[idx], trace[idx] = np.asarray(t)[:len(chunk)], np.asarray(s)[:len(chunk)]
        return {"hessian_top_eigenvalue": top, "hessian_trace": trace}

    def _spectral(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return {c: v for c, v in self._spectra(rows).items() if c in METRICS["spectral"].columns}

    def _farms(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return {c: v for c, v in self._spectra(rows).items() if c in METRICS["farms"].columns}

    def _spectra(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Both spectral metrics at once (one pass computes both; asked for twice, once)."""
        key = rows.tobytes()
        if self._spectra_cache[0] != key:
            columns = list(METRICS["spectral"].columns) + list(METRICS["farms"].columns)
            out = {c: np.empty(len(rows)) for c in columns}
            widths = (self.table["width"][rows].astype(int) if "width" in self.table
                      else np.zeros(len(rows), int))
            for width in np.unique(widths):
                pick = np.flatnonzero(widths == width)
                values = spectral_columns(self.zoo.weight_space, self.params(rows[pick]),
                                          int(width), block=self.settings.farms_block)
                for c in columns:
                    out[c][pick] = values[c]
            self._spectra_cache = (key, out)
        return self._spectra_cache[1]

    def _cka(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        # Every representation the rows need: their own, their cells', each epoch's reference.
        reference = {}
        for e in np.unique(self.table["epoch"][rows]):
            at = np.flatnonzero((self.table["epoch"] == e) & np.isfinite(self.table["val_acc"]))
            at = at[self.finite(at)]
            reference[int(e)] = int(at[np.argmax(self.table["val_acc"][at])])
        cells = {int(r): self.cell_of(int(r)) for r in rows}
        need = np.unique(np.concatenate([rows, np.array(list(reference.values())),
                                         *cells.values()]))
        need = need[self.finite(need)]
        reps = self.representations(need)
        at = {int(r): i for i, r in enumerate(need)}
        pairs = [(int(r), int(m)) for r in rows for m in cells[int(r)] if m != r and int(m) in at]
        pairs += [(int(r), reference[int(self.table["epoch"][r])]) for r in rows]
        pairs = list(dict.fromkeys(pairs))
        a = jnp.asarray(np.stack([reps[at[p]] for p, _ in pairs]))
        b = jnp.asarray(np.stack([reps[at[q]] for _, q in pairs]))
        values = dict(zip(pairs, np.asarray(jax.jit(jax.vmap(cka_lib.linear_cka))(a, b))))
        cell = np.array([np.mean([values[(int(r), int(m))] for m in cells[int(r)]
                                  if m != r and int(m) in at] or [np.nan]) for r in rows])
        ref = np.array([values[(int(r), reference[int(self.table["epoch"][r])])] for r in rows])
        return {"cka_cell": cell, "cka_reference": ref}

    def representations(self, rows: np.ndarray) -> np.ndarray:
        """(rows, examples, features): the input of every model's last layer on the batch."""
        x = self.replicate(self.data()[0])
        out = [None] * len(rows)
        where = {r: i for i, r in enumerate(rows)}
        for arch, chunk in self.groups(rows):
            full = self.padded(chunk)
            reps = np.asarray(representation_program(arch)(self.spread(self.params(full, arch)),
                                                            x))
            for r, rep in zip(chunk, reps):
                out[where[r]] = rep
        # Narrowed models have fewer features: zero columns pad them to one size, which leaves
        # linear CKA unchanged (they add nothing to any of its three norms).
        size = max(rep.shape[1] for rep in out)
        return np.stack([np.pad(rep, ((0, 0), (0, size - rep.shape[1]))) for rep in out])

    def _mc(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        x, y, _ = self.data()
        partner = np.empty(len(rows), np.int64)
        for i, r in enumerate(rows):
            cell = self.cell_of(int(r))
            cell = cell[self.finite(cell)]
            partner[i] = cell[(np.flatnonzero(cell == r)[0] + 1) % len(cell)] \
                if len(cell) > 1 else -1
        out = {c: np.full(len(rows), np.nan) for c in METRICS["mc"].columns}
        has = partner >= 0
        where = {r: i for i, r in enumerate(rows)}
        x, y = self.replicate(x), self.replicate(y)
        for arch, chunk in self.groups(rows[has]):
            idx = [where[r] for r in chunk]
            full = self.padded(chunk)
            mates = self.padded(partner[idx])
            a, b = self.params(full, arch), self.params(mates, arch)
            space = arch.weight_space
            perms = weight_matching(space, a, b, key=jax.random.key(self.settings.seed)).perms
            b = space.permute(b, perms)
            masks = self.masks(arch, full)
            if masks is not None:  # the partner's own units, wherever alignment put them
                mask_b = space.permute(self.masks(arch, mates), perms)
                masks = self.spread(jax.tree.map(lambda m, n: np.maximum(m, np.asarray(n)),
                                                 masks, mask_b))
            linear, bezier = mc_program(arch, self.settings, masks is not None)(
                self.spread(a), self.spread(b), masks if masks is not None else 0, x, y,
                self.spread(self.keys(full)))
            lam = np.linspace(0, 1, self.settings.lambdas)
            n = len(chunk)
            out["mc_linear_barrier"][idx] = loss_barrier(np.asarray(linear)[:n], lam)
            out["mc_bezier_barrier"][idx] = loss_barrier(np.asarray(bezier)[:n], lam)
            out["mc_partner"][idx] = self.table["model"][mates[:n]]
        return out


# ----------------------------------------------------------------------- compiled programs
def _loss(arch: Architecture, params, x, y):
    """Mean cross-entropy on the batch, convolutions as batched matmuls (`population_apply`:
    quicker under vmap on CPU)."""
    logits = population_apply(arch, params, x)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def hessian_one(arch: Architecture, settings: AnalyzeSettings, masked: bool):
    """(params, mask, x, y, key) -> (top eigenvalue, trace) of one model (vmap it)."""
    def one(params, mask, x, y, key):
        # The trainer's matmul convolutions (fast under vmap on CPU) have a custom gradient with
        # no forward mode: their Hessian-vector products go reverse over reverse.
        loss = lambda p: _loss(arch, p, x, y)
        m = mask if masked else None
        k1, k2 = jax.random.split(key)
        top = hessian_lib.top_eigenvalue(loss, params, k1, settings.lanczos_iterations, mask=m,
                                         reverse=True)
        tr = hessian_lib.trace(loss, params, k2, settings.trace_samples, mask=m, reverse=True)
        return top, tr
    return one


@functools.lru_cache(maxsize=64)
def hessian_program(arch: Architecture, settings: AnalyzeSettings, masked: bool) -> Callable:
    """The population version: every model of a chunk in one vmapped, jitted call (cached on
    the hashable architecture and settings)."""
    one = hessian_one(arch, settings, masked)
    return jax.jit(jax.vmap(one, (0, 0 if masked else None, None, None, 0)))


def last_layer_input(arch: Architecture) -> Callable:
    """`features(params, x) -> (examples, features)`: what enters the classification layer."""
    last = [t for t in arch.weight_space.tensors if t.keys[-1] == "kernel"][-1].keys[:-1]

    def features(params, x):
        seen = []

        def grab(next_fun, args, kwargs, context):
            if (context.method_name == "__call__" and context.module.path == last):
                seen.append(args[0])
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(grab):
            arch.apply(params, x)
        if not seen:
            raise EvaluationError(f"architecture {arch.name!r}: no module at {'/'.join(last)} "
                                  f"ran, so its input cannot be read")
        rep = seen[-1]
        return rep.reshape(rep.shape[0], -1)

    return features


@functools.lru_cache(maxsize=64)
def representation_program(arch: Architecture) -> Callable:
    return jax.jit(jax.vmap(last_layer_input(arch), (0, None)))


def mc_one(arch: Architecture, settings: AnalyzeSettings, masked: bool):
    """(a, b, mask, x, y, key) -> (linear path losses, Bézier curve losses) on the λ grid."""
    lam = jnp.linspace(0.0, 1.0, settings.lambdas)
    opt = optax.adam(settings.bezier_lr)

    def curve(a, theta, b, t):
        return jax.tree.map(lambda p, c, q: (1 - t) ** 2 * p + 2 * t * (1 - t) * c + t ** 2 * q,
                            a, theta, b)

    def one(a, b, mask, x, y, key):
        loss = lambda p: _loss(arch, p, x, y)
        line = jax.vmap(lambda t: loss(jax.tree.map(lambda p, q: (1 - t) * p + t * q, a, b)))(lam)
        # The control point starts at the midpoint, where the curve is the straight path.
        theta = jax.tree.map(lambda p, q: 0.5 * (p + q), a, b)

        def step(carry, k):
            theta, state = carry
            ts = jax.random.uniform(k, (settings.bezier_points,))
            value = lambda th: jnp.mean(jax.vmap(lambda t: loss(curve(a, th, b, t)))(ts))
            grad = jax.grad(value)(theta)
            if masked:
                grad = jax.tree.map(jnp.multiply, grad, mask)
            updates, state = opt.update(grad, state, theta)
            return (optax.apply_updates(theta, updates), state), None

        keys = jax.random.split(key, settings.bezier_steps)
        (theta, _), _ = jax.lax.scan(step, (theta, opt.init(theta)), keys)
        bent = jax.vmap(lambda t: loss(curve(a, theta, b, t)))(lam)
        return line, bent

    return one


@functools.lru_cache(maxsize=64)
def mc_program(arch: Architecture, settings: AnalyzeSettings, masked: bool) -> Callable:
    one = mc_one(arch, settings, masked)
    return jax.jit(jax.vmap(one, (0, 0, 0 if masked else None, None, None, 0)))


# ------------------------------------------------------------------------------ spectra
def spectral_columns(weight_space, params, width: int, *, block: int = 0) -> dict[str, np.ndarray]:
    """Per-model spectral summaries of a stack of models that share one `width` (0 = full):
    each is measured on its own units' sub-matrices."""
    active = ({g: min(width, n) for g, n in weight_space.group_sizes.items()} if width
              else None)
    if not _has_spectra(weight_space, active or {}):
        # Too narrow for a fit (WeightWatcher's minimum number of eigenvalues): no value.
        models = weight_space.batch_shape(params)[0]
        return {c: np.full(models, np.nan) for c in ("spectral_alpha", "farms_alpha",
                                                     "stable_rank", "log_spectral_norm")}
    return spectral_lib.population_spectral(weight_space, params, active=active,
                                            farms_block=block or None)


def _has_spectra(weight_space, active: Mapping[str, int]) -> bool:
    """Does any kernel, cut to `active`, hold enough eigenvalues for a fit?"""
    for t in weight_space.tensors:
        if t.keys[-1] != "kernel" or len(t.shape) < 2:
            continue
        shape = tuple(min(active.get(g, n), n) if g is not None else n
                      for g, n in zip(t.axes, t.shape))
        mats = jax.eval_shape(lambda k, path=t.path: spectral_lib.kernel_matrices(path, k),
                              jax.ShapeDtypeStruct(shape, jnp.float32))
        count, rows, cols = mats.shape
        if count * min(rows, cols) >= spectral_lib.MIN_EVALS:
            return True
    return False

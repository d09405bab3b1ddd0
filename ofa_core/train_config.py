"""Training settings: a TOML file of run-wide options and an ordered list of progressive-shrinking phases.

Phase names are fixed because each one means a set of elastic choices (Cai et al., 2020, section 3.3):

    full      largest kernel, expand and depth (trains the teacher)
    kernel    kernel elastic
    depth-1   kernel elastic, depth in the two largest values
    depth-2   kernel and depth elastic
    expand-1  kernel and depth elastic, expand in the two largest values (channels sorted first)
    expand-2  everything elastic (channels sorted first)

Every phase samples a random resolution per batch: from the space's resolutions, or from the phase's own
`resolutions` list (a subset of the space's), e.g. to train the full network at the larger inputs only.

`sandwich = true` in a phase makes the first subnet of every step the largest one and the second (when
`subnets_per_step` >= 2) the smallest the phase allows; the rest are drawn at random as the paper does. This
is the "sandwich rule" of BigNAS (Yu et al., 2020), added here because a schedule of a few epochs per phase
samples the two ends of the space too rarely to keep the largest subnet at the teacher's accuracy.
`largest_at_max_resolution = true` (with `sandwich`) trains that largest subnet at the phase's largest
resolution on every step, on the same images; the other subnets keep the batch's random resolution.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path

from ofa_core.errors import OFABenchError

PHASES = ("full", "kernel", "depth-1", "depth-2", "expand-1", "expand-2")
SORTING_PHASES = ("expand-1", "expand-2")


class TrainConfigError(OFABenchError):
    """A training config file that cannot be read or holds a bad value."""


@dataclass(frozen=True)
class Phase:
    """One phase: its name (see PHASES), length, peak learning rate and subnets per step."""

    name: str
    epochs: float
    lr: float
    subnets_per_step: int = 1
    warmup_epochs: float = 0.0
    resolutions: tuple[int, ...] | None = None  # None: every resolution of the space
    sandwich: bool = False  # every step trains the largest subnet and the phase's smallest, then random ones
    largest_at_max_resolution: bool = False  # sandwich: the largest subnet always at the largest resolution

    @property
    def sorts_channels(self) -> bool:
        return self.name in SORTING_PHASES

    @property
    def distills(self) -> bool:
        return self.name != "full"


@dataclass(frozen=True)
class TrainConfig:
    """Run-wide options and the phases, in order."""

    space: str
    phases: tuple[Phase, ...]
    seed: int = 0
    batch_size: int = 256
    val_size: int = 10_000
    train_images: int = 0  # 0: the whole training split; else its first N images (tests, smoke runs)
    label_smoothing: float = 0.1
    weight_decay: float = 3e-5
    momentum: float = 0.9
    nesterov: bool = True
    kd_ratio: float = 1.0
    augment: bool = True
    bn_recal_images: int = 2000
    monitor_images: int = 2000  # validation images scored after each epoch (largest and smallest subnet)
    source: str = field(default="", compare=False)  # the TOML text, kept in checkpoints


_RUN_KEYS = {f.name: f for f in fields(TrainConfig) if f.name not in ("space", "phases", "source")}
_PHASE_KEYS = {f.name for f in fields(Phase)}


def _check_type(where: str, key: str, value, want: type) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) if want is float else (
        isinstance(value, want) and not (want is int and isinstance(value, bool)))
    if not ok:
        raise TrainConfigError(f"{where}: {key} = {value!r} must be {want.__name__}")


def parse_config(text: str, origin: str = "config") -> TrainConfig:
    """Parse TOML text into a `TrainConfig`; every problem is a one-line `TrainConfigError`."""
    import tomllib

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TrainConfigError(f"{origin}: not valid TOML: {exc}") from None
    if "space" not in doc or not isinstance(doc["space"], str):
        raise TrainConfigError(f"{origin}: needs space = \"<search space name>\"")
    unknown = set(doc) - set(_RUN_KEYS) - {"space", "phases"}
    if unknown:
        raise TrainConfigError(f"{origin}: unknown key(s) {', '.join(sorted(unknown))}")
    run = {}
    for key, value in doc.items():
        if key in _RUN_KEYS:
            want = {"int": int, "float": float, "bool": bool}[str(_RUN_KEYS[key].type)]
            _check_type(origin, key, value, want)
            if want is not bool and value < 0:
                raise TrainConfigError(f"{origin}: {key} = {value} must not be negative")
            run[key] = value
    if run.get("batch_size", 1) == 0:
        raise TrainConfigError(f"{origin}: batch_size must be positive")
    raw_phases = doc.get("phases")
    if not isinstance(raw_phases, list) or not raw_phases:
        raise TrainConfigError(f"{origin}: needs at least one [[phases]] table")
    phases = []
    for i, p in enumerate(raw_phases):
        where = f"{origin}: phase {i + 1}"
        if not isinstance(p, dict):
            raise TrainConfigError(f"{where} must be a table")
        name = p.get("name")
        if name not in PHASES:
            raise TrainConfigError(f"{where}: unknown phase {name!r}; known: {', '.join(PHASES)}")
        extra = set(p) - _PHASE_KEYS
        if extra:
            raise TrainConfigError(f"{where} ({name}): unknown key(s) {', '.join(sorted(extra))}")
        for key in ("epochs", "lr"):
            if key not in p:
                raise TrainConfigError(f"{where} ({name}): needs {key}")
        for key, want in (("epochs", float), ("lr", float), ("subnets_per_step", int), ("warmup_epochs", float)):
            if key in p:
                _check_type(f"{where} ({name})", key, p[key], want)
        if p["epochs"] < 0:
            raise TrainConfigError(f"{where} ({name}): epochs = {p['epochs']} must not be negative")
        if p["lr"] <= 0:
            raise TrainConfigError(f"{where} ({name}): lr = {p['lr']} must be positive")
        if p.get("subnets_per_step", 1) < 1:
            raise TrainConfigError(f"{where} ({name}): subnets_per_step must be at least 1")
        if not 0 <= p.get("warmup_epochs", 0) <= p["epochs"]:
            raise TrainConfigError(f"{where} ({name}): warmup_epochs must be within 0..epochs")
        for key in ("sandwich", "largest_at_max_resolution"):
            if key in p:
                _check_type(f"{where} ({name})", key, p[key], bool)
        if p.get("largest_at_max_resolution") and not p.get("sandwich"):
            raise TrainConfigError(f"{where} ({name}): largest_at_max_resolution needs sandwich = true")
        res = p.get("resolutions")
        if res is not None and (not isinstance(res, list) or not res or not all(
                isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in res)):
            raise TrainConfigError(f"{where} ({name}): resolutions must be a non-empty list of positive integers")
        phases.append(Phase(name=name, epochs=float(p["epochs"]), lr=float(p["lr"]),
                            subnets_per_step=int(p.get("subnets_per_step", 1)),
                            warmup_epochs=float(p.get("warmup_epochs", 0.0)),
                            resolutions=tuple(res) if res is not None else None,
                            sandwich=bool(p.get("sandwich", False)),
                            largest_at_max_resolution=bool(p.get("largest_at_max_resolution", False))))
    names = [p.name for p in phases]
    if len(set(names)) != len(names):
        raise TrainConfigError(f"{origin}: a phase appears twice ({', '.join(names)})")
    if names != sorted(names, key=PHASES.index):
        raise TrainConfigError(f"{origin}: phases must follow the order {', '.join(PHASES)}")
    cfg = TrainConfig(space=doc["space"], phases=tuple(phases), source=text, **run)
    check_resolutions(cfg, origin)
    return cfg


def check_resolutions(cfg: TrainConfig, origin: str = "config") -> None:
    """Every phase's resolutions must belong to the space (an unknown space is reported where it is used)."""
    from ofa_core.space import SearchSpace

    try:
        space = SearchSpace.get(cfg.space)
    except OFABenchError:
        return
    for i, ph in enumerate(cfg.phases):
        bad = [r for r in ph.resolutions or () if r not in space.resolutions]
        if bad:
            raise TrainConfigError(f"{origin}: phase {i + 1} ({ph.name}): resolution {bad[0]} is not one of "
                                   f"{cfg.space}'s ({', '.join(map(str, space.resolutions))})")


def load_config(path: str | Path) -> TrainConfig:
    """A config from a file path, or by the name of a shipped one (`fmnist` -> ofa_core/configs/fmnist.toml)."""
    p = Path(path)
    if not p.exists() and p.suffix == "" and "/" not in str(path):
        shipped = resources.files("ofa_core") / "configs" / f"{path}.toml"
        if shipped.is_file():
            return parse_config(shipped.read_text(), origin=f"{path}.toml")
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise TrainConfigError(f"training config {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TrainConfigError(f"cannot read training config {path}: {exc}") from None
    return parse_config(text, origin=str(path))

"""Search spaces of OFA-MobileNetV3 supernets and the subnet configurations they admit.

A `SearchSpace` describes the supernet's fixed skeleton (widths, strides, activations, SE) and its elastic
choices (kernel, expand ratio, depth, resolution). A `SubnetConfig` picks one value for each choice.

String form of a config (documented here, parsed by `SubnetConfig.from_string`)::

    r160:k3e4,k5e6|k3e3,k3e3,k7e4|k5e6,k5e6|k3e4,k3e4,k3e4,k3e4|k7e6,k7e6

`r160` is the input resolution; stages are separated by `|`; each stage lists its *active* blocks in order,
`k<kernel>e<expand>`; the number of blocks in a stage is its depth. Blocks skipped by depth are not written.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ofa_core.cost import batch_macs, batch_params
from ofa_core.errors import InvalidConfigError, UnknownSpaceError


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round `value` to the nearest multiple of `divisor`, never going more than 10% below it (as OFA does)."""
    min_value = divisor if min_value is None else min_value
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return int(new_value)


@dataclass(frozen=True)
class StageSpec:
    """One elastic stage: output width, stride of its first block, activation and squeeze-excite."""

    width: int
    stride: int
    act: str  # "relu" or "h_swish"
    se: bool


@dataclass(frozen=True)
class BlockSpec:
    """One block slot of the supernet, with everything its shape depends on except the elastic choices."""

    slot: int  # 0..n_slots-1 over the elastic stages
    stage: int
    index: int  # position inside the stage
    in_channels: int
    out_channels: int
    stride: int
    act: str
    se: bool

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels


@dataclass(frozen=True)
class SubnetConfig:
    """One subnet: per-slot kernel and expand ratio, per-stage depth, input resolution.

    `ks` and `e` have one entry per block slot (stages x max depth); entries of slots skipped by depth carry
    no meaning and are normalised (set to the stage's last active block), so configs that differ only there
    compare and hash equal.
    """

    ks: tuple[int, ...]
    e: tuple[int, ...]
    d: tuple[int, ...]
    r: int

    def __post_init__(self) -> None:
        ks, e, d = tuple(int(v) for v in self.ks), tuple(int(v) for v in self.e), tuple(int(v) for v in self.d)
        if not d:
            raise InvalidConfigError("config has no stages (empty 'd')")
        if len(ks) != len(e):
            raise InvalidConfigError(f"config has {len(ks)} kernel sizes but {len(e)} expand ratios")
        if len(ks) % len(d) != 0:
            raise InvalidConfigError(f"config has {len(ks)} block slots, not a multiple of its {len(d)} stages")
        per_stage = len(ks) // len(d)
        ks_l, e_l = list(ks), list(e)
        for s, depth in enumerate(d):
            if not 1 <= depth <= per_stage:
                raise InvalidConfigError(f"stage {s + 1} has depth {depth}; it must be 1..{per_stage}")
            last = s * per_stage + depth - 1
            for j in range(last + 1, (s + 1) * per_stage):
                ks_l[j], e_l[j] = ks_l[last], e_l[last]
        object.__setattr__(self, "ks", tuple(ks_l))
        object.__setattr__(self, "e", tuple(e_l))
        object.__setattr__(self, "d", d)
        object.__setattr__(self, "r", int(self.r))

    # ---- shape helpers -------------------------------------------------------------------------------
    @property
    def n_stages(self) -> int:
        return len(self.d)

    @property
    def max_depth(self) -> int:
        return len(self.ks) // len(self.d)

    def active_slots(self) -> list[int]:
        """Indices of the block slots that run, in order."""
        m = self.max_depth
        return [s * m + j for s, depth in enumerate(self.d) for j in range(depth)]

    def stage_blocks(self) -> list[list[tuple[int, int]]]:
        """Active (kernel, expand) pairs per stage."""
        m = self.max_depth
        return [[(self.ks[s * m + j], self.e[s * m + j]) for j in range(depth)] for s, depth in enumerate(self.d)]

    # ---- conversions ---------------------------------------------------------------------------------
    @classmethod
    def from_ofa_dict(cls, d: Mapping) -> "SubnetConfig":
        """From the official dict `{"ks": [...], "e": [...], "d": [...], "r": [R]}` (`image_size` also read)."""
        if not isinstance(d, Mapping):
            raise InvalidConfigError(f"config must be a dict with ks, e, d, r; got {type(d).__name__}")
        missing = [k for k in ("ks", "e", "d") if k not in d]
        if missing:
            raise InvalidConfigError(f"config dict lacks {', '.join(repr(k) for k in missing)}")
        r = d.get("r", d.get("image_size"))
        if r is None:
            raise InvalidConfigError("config dict lacks the resolution ('r' or 'image_size')")
        if isinstance(r, (list, tuple)):
            if len(r) != 1:
                raise InvalidConfigError(f"config resolution must be one value, got {list(r)}")
            r = r[0]
        try:
            return cls(tuple(d["ks"]), tuple(d["e"]), tuple(d["d"]), int(r))
        except (TypeError, ValueError) as exc:
            if isinstance(exc, InvalidConfigError):
                raise
            raise InvalidConfigError(f"config dict has a non-integer value: {exc}") from None

    def to_ofa_dict(self) -> dict:
        return {"ks": list(self.ks), "e": list(self.e), "d": list(self.d), "r": [self.r]}

    _STRING_RE = re.compile(r"^r(\d+):(.*)$")
    _BLOCK_RE = re.compile(r"^k(\d+)e(\d+)$")

    def to_string(self) -> str:
        stages = [",".join(f"k{k}e{e}" for k, e in blocks) for blocks in self.stage_blocks()]
        return f"r{self.r}:" + "|".join(stages)

    @classmethod
    def from_string(cls, text: str, max_depth: int = 4) -> "SubnetConfig":
        """Parse the string form (see the module docstring). `max_depth` is the number of slots per stage."""
        m = cls._STRING_RE.match(text.strip())
        if not m:
            raise InvalidConfigError(f"config string {text!r} must look like 'r160:k3e4,k5e6|k3e3,...'")
        r = int(m.group(1))
        ks: list[int] = []
        e: list[int] = []
        d: list[int] = []
        for s, stage in enumerate(m.group(2).split("|")):
            blocks = [b for b in stage.split(",") if b]
            if not 1 <= len(blocks) <= max_depth:
                raise InvalidConfigError(f"stage {s + 1} of {text!r} has {len(blocks)} blocks; it must be 1..{max_depth}")
            for b in blocks:
                bm = cls._BLOCK_RE.match(b.strip())
                if not bm:
                    raise InvalidConfigError(f"block {b!r} in stage {s + 1} must look like 'k3e4'")
                ks.append(int(bm.group(1)))
                e.append(int(bm.group(2)))
            ks.extend([ks[-1]] * (max_depth - len(blocks)))
            e.extend([e[-1]] * (max_depth - len(blocks)))
            d.append(len(blocks))
        return cls(tuple(ks), tuple(e), tuple(d), r)

    @classmethod
    def parse(cls, text: str, max_depth: int = 4) -> "SubnetConfig":
        """Either form: JSON of the official dict, or the string form."""
        import json

        t = text.strip()
        if t.startswith("{"):
            try:
                return cls.from_ofa_dict(json.loads(t))
            except json.JSONDecodeError as exc:
                raise InvalidConfigError(f"config is not valid JSON: {exc.msg} at column {exc.colno}") from None
        return cls.from_string(t, max_depth=max_depth)

    def __str__(self) -> str:
        return self.to_string()


@dataclass(frozen=True)
class ConfigBatch:
    """Many configs as arrays: `ks`, `e` (N, slots), `d` (N, stages), `r` (N,), `active` (N, slots) bool."""

    ks: np.ndarray
    e: np.ndarray
    d: np.ndarray
    r: np.ndarray

    def __len__(self) -> int:
        return int(self.r.shape[0])

    @property
    def max_depth(self) -> int:
        return self.ks.shape[1] // self.d.shape[1]

    @property
    def active(self) -> np.ndarray:
        idx = np.arange(self.max_depth)
        return (idx[None, None, :] < self.d[:, :, None]).reshape(len(self), -1)

    @classmethod
    def from_configs(cls, cfgs: Sequence[SubnetConfig]) -> "ConfigBatch":
        cfgs = list(cfgs)
        if not cfgs:
            raise InvalidConfigError("empty list of configs")
        return cls(
            ks=np.array([c.ks for c in cfgs], dtype=np.int64),
            e=np.array([c.e for c in cfgs], dtype=np.int64),
            d=np.array([c.d for c in cfgs], dtype=np.int64),
            r=np.array([c.r for c in cfgs], dtype=np.int64),
        )

    def to_configs(self) -> list[SubnetConfig]:
        return [
            SubnetConfig(tuple(self.ks[i]), tuple(self.e[i]), tuple(self.d[i]), int(self.r[i]))
            for i in range(len(self))
        ]

    def normalised(self) -> "ConfigBatch":
        """Copy with skipped slots set to the stage's last active block (the same rule as `SubnetConfig`)."""
        n, m = len(self), self.max_depth
        stages = self.d.shape[1]
        j = np.minimum(np.arange(m)[None, None, :], self.d[:, :, None] - 1)  # (N, S, M)
        src = (np.arange(stages)[None, :, None] * m + j).reshape(n, -1)
        rows = np.arange(n)[:, None]
        return ConfigBatch(self.ks[rows, src], self.e[rows, src], self.d.copy(), self.r.copy())


@dataclass(frozen=True)
class SearchSpace:
    """An OFA-MobileNetV3 search space: the supernet's skeleton and the elastic choices."""

    name: str
    in_channels: int
    n_classes: int
    first_conv_width: int
    first_conv_stride: int
    first_block_width: int
    stages: tuple[StageSpec, ...]
    final_expand_width: int
    feature_mix_width: int
    resolutions: tuple[int, ...]
    ks_list: tuple[int, ...] = (3, 5, 7)
    expand_list: tuple[int, ...] = (3, 4, 6)
    depth_list: tuple[int, ...] = (2, 3, 4)
    dropout: float = 0.1
    first_conv_act: str = "h_swish"
    first_block_act: str = "relu"
    description: str = ""

    # ---- registry ------------------------------------------------------------------------------------
    @staticmethod
    def get(name: str) -> "SearchSpace":
        try:
            return _SPACES[name]
        except KeyError:
            raise UnknownSpaceError(f"unknown search space {name!r}; known: {', '.join(sorted(_SPACES))}") from None

    @staticmethod
    def names() -> list[str]:
        return sorted(_SPACES)

    # ---- shape ---------------------------------------------------------------------------------------
    @property
    def n_stages(self) -> int:
        return len(self.stages)

    @property
    def max_depth(self) -> int:
        return max(self.depth_list)

    @property
    def n_slots(self) -> int:
        return self.n_stages * self.max_depth

    def blocks(self) -> list[BlockSpec]:
        """Every elastic block slot, with its input and output channels and stride."""
        out: list[BlockSpec] = []
        in_ch = self.first_block_width
        for s, st in enumerate(self.stages):
            for j in range(self.max_depth):
                out.append(BlockSpec(
                    slot=s * self.max_depth + j, stage=s, index=j, in_channels=in_ch, out_channels=st.width,
                    stride=st.stride if j == 0 else 1, act=st.act, se=st.se,
                ))
                in_ch = st.width
        return out

    def middle_channels(self, in_channels: int, expand: int) -> int:
        return make_divisible(round(in_channels * expand), 8)

    def se_channels(self, middle: int) -> int:
        return make_divisible(middle // 4, 8)

    def feature_size(self, r: int) -> list[int]:
        """Spatial size after the first conv and after each stage, for input resolution `r` (same padding)."""
        size = math.ceil(r / self.first_conv_stride)
        sizes = [size]
        for st in self.stages:
            size = math.ceil(size / st.stride)
            sizes.append(size)
        return sizes

    # ---- validation ----------------------------------------------------------------------------------
    def validate(self, cfg: SubnetConfig) -> SubnetConfig:
        """Raise `InvalidConfigError` naming the first thing wrong with `cfg` for this space; return it if fine."""
        if len(cfg.d) != self.n_stages:
            raise InvalidConfigError(f"{self.name}: config has {len(cfg.d)} stages, the space has {self.n_stages}")
        if len(cfg.ks) != self.n_slots:
            raise InvalidConfigError(f"{self.name}: config has {len(cfg.ks)} block slots, the space has {self.n_slots}")
        for s, depth in enumerate(cfg.d):
            if depth not in self.depth_list:
                raise InvalidConfigError(f"{self.name}: depth {depth} in stage {s + 1} is not one of {list(self.depth_list)}")
        for i in cfg.active_slots():
            if cfg.ks[i] not in self.ks_list:
                raise InvalidConfigError(f"{self.name}: kernel {cfg.ks[i]} at block {i} is not one of {list(self.ks_list)}")
            if cfg.e[i] not in self.expand_list:
                raise InvalidConfigError(f"{self.name}: expand {cfg.e[i]} at block {i} is not one of {list(self.expand_list)}")
        if cfg.r not in self.resolutions:
            lo, hi = min(self.resolutions), max(self.resolutions)
            raise InvalidConfigError(f"{self.name}: resolution {cfg.r} is not in the space ({lo}..{hi}: {_fmt_res(self.resolutions)})")
        return cfg

    def validate_batch(self, b: ConfigBatch) -> ConfigBatch:
        """Vectorised `validate`: raise a one-line `InvalidConfigError` naming the first bad config; return `b`."""
        if b.ks.shape[1:] != (self.n_slots,) or b.e.shape[1:] != (self.n_slots,) or b.d.shape[1:] != (self.n_stages,):
            raise InvalidConfigError(f"{self.name}: config batch has {b.ks.shape[1]} slots and {b.d.shape[1]} stages, "
                                     f"the space has {self.n_slots} and {self.n_stages}")
        bad_d = ~np.isin(b.d, self.depth_list).all(axis=1)
        act = b.active if not bad_d.any() else np.ones(b.ks.shape, dtype=bool)
        bad_k = (act & ~np.isin(b.ks, self.ks_list)).any(axis=1)
        bad_e = (act & ~np.isin(b.e, self.expand_list)).any(axis=1)
        bad = bad_d | bad_k | bad_e | ~np.isin(b.r, self.resolutions)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            try:
                self.validate(SubnetConfig(tuple(b.ks[i]), tuple(b.e[i]), tuple(b.d[i]), int(b.r[i])))
            except InvalidConfigError as exc:
                raise InvalidConfigError(f"config {i} of the batch: {exc}") from None
            raise InvalidConfigError(f"config {i} of the batch is not in {self.name}")
        return b

    def config_from_ofa_dict(self, d: Mapping) -> SubnetConfig:
        return self.validate(SubnetConfig.from_ofa_dict(d))

    def parse_config(self, text: str) -> SubnetConfig:
        """A config from the command line: `largest`, `smallest`, JSON of the official dict, or the string form."""
        t = text.strip()
        if t == "largest":
            return self.largest()
        if t == "smallest":
            return self.smallest()
        return self.validate(SubnetConfig.parse(t, max_depth=self.max_depth))

    # ---- named configs and sampling ------------------------------------------------------------------
    def largest(self, r: int | None = None) -> SubnetConfig:
        return SubnetConfig(
            (max(self.ks_list),) * self.n_slots, (max(self.expand_list),) * self.n_slots,
            (self.max_depth,) * self.n_stages, max(self.resolutions) if r is None else r,
        )

    def smallest(self, r: int | None = None) -> SubnetConfig:
        return SubnetConfig(
            (min(self.ks_list),) * self.n_slots, (min(self.expand_list),) * self.n_slots,
            (min(self.depth_list),) * self.n_stages, min(self.resolutions) if r is None else r,
        )

    def sample_batch(self, rng: np.random.Generator, n: int, resolutions: Sequence[int] | None = None) -> ConfigBatch:
        """`n` uniformly random configs as arrays (normalised)."""
        res = np.asarray(resolutions if resolutions is not None else self.resolutions, dtype=np.int64)
        ks = np.asarray(self.ks_list)[rng.integers(0, len(self.ks_list), size=(n, self.n_slots))]
        e = np.asarray(self.expand_list)[rng.integers(0, len(self.expand_list), size=(n, self.n_slots))]
        d = np.asarray(self.depth_list)[rng.integers(0, len(self.depth_list), size=(n, self.n_stages))]
        r = res[rng.integers(0, len(res), size=n)]
        return ConfigBatch(ks.astype(np.int64), e.astype(np.int64), d.astype(np.int64), r).normalised()

    def sample(self, rng: np.random.Generator, n: int | None = None,
               resolutions: Sequence[int] | None = None) -> SubnetConfig | list[SubnetConfig]:
        """One random config (`n` None) or a list of `n`."""
        cfgs = self.sample_batch(rng, 1 if n is None else n, resolutions).to_configs()
        return cfgs[0] if n is None else cfgs

    def mutate(self, cfg: SubnetConfig, rng: np.random.Generator, prob: float = 0.1,
               resolutions: Sequence[int] | None = None) -> SubnetConfig:
        """Resample each choice (kernel, expand per slot; depth per stage; resolution) with probability `prob`."""
        res = list(resolutions if resolutions is not None else self.resolutions)
        ks, e, d = list(cfg.ks), list(cfg.e), list(cfg.d)
        r = cfg.r
        if rng.random() < prob:
            r = int(res[rng.integers(len(res))])
        for i in range(self.n_slots):
            if rng.random() < prob:
                ks[i] = int(self.ks_list[rng.integers(len(self.ks_list))])
            if rng.random() < prob:
                e[i] = int(self.expand_list[rng.integers(len(self.expand_list))])
        for s in range(self.n_stages):
            if rng.random() < prob:
                d[s] = int(self.depth_list[rng.integers(len(self.depth_list))])
        return SubnetConfig(tuple(ks), tuple(e), tuple(d), r)

    def crossover(self, a: SubnetConfig, b: SubnetConfig, rng: np.random.Generator) -> SubnetConfig:
        """Each choice taken from `a` or `b` with equal probability."""
        pick = lambda x, y: x if rng.random() < 0.5 else y  # noqa: E731
        return SubnetConfig(
            tuple(pick(x, y) for x, y in zip(a.ks, b.ks)), tuple(pick(x, y) for x, y in zip(a.e, b.e)),
            tuple(pick(x, y) for x, y in zip(a.d, b.d)), pick(a.r, b.r),
        )

    # ---- batch encodings -----------------------------------------------------------------------------
    def encode(self, cfgs: Sequence[SubnetConfig] | ConfigBatch) -> ConfigBatch:
        return cfgs if isinstance(cfgs, ConfigBatch) else ConfigBatch.from_configs(cfgs)

    def one_hot(self, cfgs: Sequence[SubnetConfig] | ConfigBatch) -> np.ndarray:
        """Per slot a one-hot of kernel then of expand (zeros where skipped), then a one-hot of resolution.

        Float32 array (N, n_slots * (|ks| + |e|) + |resolutions|).
        """
        b = self.encode(cfgs)
        act = b.active
        ks_oh = (b.ks[:, :, None] == np.asarray(self.ks_list)[None, None, :]) & act[:, :, None]
        e_oh = (b.e[:, :, None] == np.asarray(self.expand_list)[None, None, :]) & act[:, :, None]
        r_oh = b.r[:, None] == np.asarray(self.resolutions)[None, :]
        return np.concatenate(
            [ks_oh.reshape(len(b), -1), e_oh.reshape(len(b), -1), r_oh], axis=1
        ).astype(np.float32)

    # ---- cost (counted in ofa_core.cost) -------------------------------------------------------------
    def macs(self, cfgs: SubnetConfig | Sequence[SubnetConfig] | ConfigBatch):
        """MACs of one config (-> int) or many (-> int64 array)."""
        b, single = self._validated_batch(cfgs)
        total = batch_macs(self, b)
        return int(total[0]) if single else total

    def params(self, cfgs: SubnetConfig | Sequence[SubnetConfig] | ConfigBatch):
        """Parameter count of one config (-> int) or many (-> int64 array)."""
        b, single = self._validated_batch(cfgs)
        total = batch_params(self, b)
        return int(total[0]) if single else total

    def _validated_batch(self, cfgs) -> tuple[ConfigBatch, bool]:
        """The configs as a validated batch, and whether a single config was given."""
        if isinstance(cfgs, SubnetConfig):
            return ConfigBatch.from_configs([self.validate(cfgs)]), True
        batch = cfgs if isinstance(cfgs, ConfigBatch) else ConfigBatch.from_configs(list(cfgs))
        return self.validate_batch(batch), False


def _fmt_res(res: Iterable[int]) -> str:
    res = sorted(res)
    if len(res) > 2:
        steps = {b - a for a, b in zip(res, res[1:])}
        if len(steps) == 1:
            return f"step {steps.pop()}"
    return ", ".join(str(r) for r in res)


_RELU, _HS = "relu", "h_swish"
_SE = (False, True, False, True, True)
_ACTS = (_RELU, _RELU, _HS, _HS, _HS)
_STRIDES = (2, 2, 2, 1, 2)


def _mbv3_space(name: str, width_mult: float, description: str) -> SearchSpace:
    base = [16, 16, 24, 40, 80, 112, 160, 960, 1280]
    w = [make_divisible(b * width_mult, 8) for b in base]
    return SearchSpace(
        name=name, in_channels=3, n_classes=1000,
        first_conv_width=w[0], first_conv_stride=2, first_block_width=w[1],
        stages=tuple(StageSpec(w[2 + i], _STRIDES[i], _ACTS[i], _SE[i]) for i in range(5)),
        final_expand_width=w[7], feature_mix_width=w[8],
        resolutions=tuple(range(128, 225, 4)), dropout=0.1, description=description,
    )


def _fmnist_space() -> SearchSpace:
    # Fashion-MNIST (1x28x28, 10 classes), sized to train on a 2-core CPU. Elastic resolution gives the space
    # its spread: at 28 px alone the whole kernel/expand/depth range spans only ~0.3 points. 24..36 px (the
    # images resized, upsampled above 28): below 24 the smallest subnet falls under 88% (86% at 20 px, 82% at
    # 16 px in the first trained supernet) while its latency hardly falls (0.086 ms at both 20 and 24 px on
    # local-cpu, onnxruntime, 1 thread); 36 px makes the largest 4.6x slower than the smallest (0.40 ms).
    # The first conv has stride 2: with stride 1 the largest subnet, the training bottleneck, trained 2.4x
    # slower.
    widths = (16, 24, 32, 48, 64)
    return SearchSpace(
        name="ofa-mbv3-fmnist", in_channels=1, n_classes=10,
        first_conv_width=16, first_conv_stride=2, first_block_width=16,
        stages=tuple(StageSpec(widths[i], (2, 2, 2, 1, 1)[i], _ACTS[i], _SE[i]) for i in range(5)),
        final_expand_width=192, feature_mix_width=256,
        resolutions=(24, 28, 32, 36), dropout=0.1,
        description="small OFA-MobileNetV3 for Fashion-MNIST (1 channel, 10 classes, 24..36 px)",
    )


_SPACES: dict[str, SearchSpace] = {
    s.name: s
    for s in (
        _mbv3_space("ofa-mbv3-w1.0", 1.0, "official OFA-MobileNetV3, width 1.0, ImageNet"),
        _mbv3_space("ofa-mbv3-w1.2", 1.2, "official OFA-MobileNetV3, width 1.2, ImageNet"),
        _fmnist_space(),
    )
}

"""Accuracy predictor: the official OFA MLP over a one-hot encoding of a subnet, scoring thousands at once.

The network is `n_layers` x (Linear + ReLU) of width `hidden`, a bias-free Linear to one output, plus a
constant `base_acc` (the mean accuracy of the training set), as in the official implementation. The input
encoding is, per block slot, a one-hot of kernel size, then (separately, after all slots) a one-hot of
expand ratio, zeros for slots that elastic depth skips, then a one-hot of the resolution bin. The official
published predictor bins resolutions on 112..224 step 16, mapping a resolution to the bin at or below it
(`(r - 112) // 16`, as the official `spec2feats` does); predictors trained here bin on the space's own
resolutions. Weights live as float32 numpy arrays, so the forward pass needs no torch; torch is used only to
train (`fit`) and for the reference forward (`predict_torch`).

An MLP fitted on uniformly random subnets has never seen the sandwich-trained ends of a supernet (the largest and
smallest subnets and their near neighbours, which random sampling practically never draws) and predicts them
towards the mean. `AnchorCorrection` adds, on top of the MLP, a kernel-ridge fit of its residuals on measured
(config, accuracy) pairs that include such subnets; `AccuracyPredictor.load` applies it when an anchors file
(`<predictor stem>-anchors.json`) lies beside the weights.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ofa_core.errors import CheckpointError, InvalidConfigError
from ofa_core.space import ConfigBatch, SearchSpace, SubnetConfig

FORMAT_VERSION = 1
ANCHORS_FORMAT = "ofa-bench-accuracy-anchors"
#: the published anchors (the official predictor, the Note10 tables): this folder, else `../shared/anchors`
ANCHORS_ENV = "OFA_BENCH_ANCHORS"
OFFICIAL_RESOLUTION_GRID = tuple(range(112, 225, 16))
_OFFICIAL_SPACE = "ofa-mbv3-w1.2"


@dataclass(frozen=True)
class AccuracyEncoding:
    """How a config becomes the predictor's input vector: choice lists, slot layout and resolution bins."""

    ks_list: tuple[int, ...]
    expand_list: tuple[int, ...]
    n_stages: int
    max_depth: int
    resolution_grid: tuple[int, ...]

    @classmethod
    def official(cls) -> "AccuracyEncoding":
        """The encoding of the published OFA-MobileNetV3 predictor (128 inputs)."""
        return cls((3, 5, 7), (3, 4, 6), 5, 4, OFFICIAL_RESOLUTION_GRID)

    @classmethod
    def for_space(cls, space: SearchSpace) -> "AccuracyEncoding":
        """One bin per resolution of the space."""
        return cls(tuple(space.ks_list), tuple(space.expand_list), space.n_stages, space.max_depth,
                   tuple(sorted(space.resolutions)))

    @property
    def n_slots(self) -> int:
        return self.n_stages * self.max_depth

    @property
    def n_features(self) -> int:
        return self.n_slots * (len(self.ks_list) + len(self.expand_list)) + len(self.resolution_grid)

    def resolution_bins(self, r: np.ndarray) -> np.ndarray:
        """Index of the grid value at or below each resolution; below the grid is an error."""
        grid = np.asarray(self.resolution_grid)
        r = np.asarray(r)
        if r.size and r.min() < grid[0]:
            raise InvalidConfigError(f"resolution {int(r.min())} is below the predictor's lowest resolution {grid[0]}")
        return np.searchsorted(grid, r, side="right") - 1

    def encode(self, cfgs: Sequence[SubnetConfig] | ConfigBatch) -> np.ndarray:
        """Float32 (N, n_features): kernel one-hots of every slot, then expand one-hots, then resolution."""
        b = cfgs if isinstance(cfgs, ConfigBatch) else ConfigBatch.from_configs(cfgs)
        if b.ks.shape[1] != self.n_slots or b.d.shape[1] != self.n_stages:
            raise InvalidConfigError(
                f"config has {b.ks.shape[1]} slots in {b.d.shape[1]} stages; the predictor expects "
                f"{self.n_slots} in {self.n_stages}")
        n, nk, ne = len(b), len(self.ks_list), len(self.expand_list)
        active = b.active
        out = np.zeros((n, self.n_features), dtype=np.float32)
        rows = np.arange(n)[:, None]
        slots = np.arange(self.n_slots)[None, :]
        k_idx = _choice_index(b.ks, self.ks_list, "kernel", active)
        e_idx = _choice_index(b.e, self.expand_list, "expand", active)
        out[rows, slots * nk + k_idx] = active
        out[rows, self.n_slots * nk + slots * ne + e_idx] = active
        out[np.arange(n), self.n_slots * (nk + ne) + self.resolution_bins(b.r)] = 1.0
        return out

    def encode_indices(self, k_idx: np.ndarray, e_idx: np.ndarray, active: np.ndarray,
                       r_bin: np.ndarray) -> np.ndarray:
        """The same features from choice indices (into `ks_list`, `expand_list`, `resolution_grid`): the fast
        path of a search that already holds configs as indices."""
        n, nk, ne, S = len(k_idx), len(self.ks_list), len(self.expand_list), self.n_slots
        out = np.zeros((n, self.n_features), dtype=np.float32)
        rows = np.arange(n)[:, None]
        slots = np.arange(S)[None, :]
        out[rows, slots * nk + k_idx] = active
        out[rows, S * nk + slots * ne + e_idx] = active
        out[np.arange(n), S * (nk + ne) + r_bin] = 1.0
        return out


def _choice_index(values: np.ndarray, choices: tuple[int, ...], what: str, active: np.ndarray) -> np.ndarray:
    lookup = np.asarray(choices)
    idx = np.argmax(values[..., None] == lookup, axis=-1)
    bad = (lookup[idx] != values) & active
    if bad.any():
        raise InvalidConfigError(f"{what} {int(values[bad][0])} is not one of {list(choices)}")
    return idx


@dataclass
class AccuracyPredictor:
    """The MLP's weights (float32 arrays: `weights[i]` is (in, out), `biases[i]` (out,), `w_out` (hidden,))."""

    encoding: AccuracyEncoding
    weights: list[np.ndarray]
    biases: list[np.ndarray]
    w_out: np.ndarray
    base_acc: float
    space: str = ""
    metadata: dict = field(default_factory=dict)
    correction: "AnchorCorrection | None" = None  # residual correction on measured anchors (None: the MLP alone)

    # ---- scoring -------------------------------------------------------------------------------------
    def __call__(self, cfgs: Sequence[SubnetConfig] | ConfigBatch) -> np.ndarray:
        return self.predict(cfgs)

    def predict(self, cfgs: Sequence[SubnetConfig] | ConfigBatch) -> np.ndarray:
        """Predicted accuracy (fraction) of every config, float64 (N,): numpy forward, one matmul per layer,
        plus the anchor correction if there is one."""
        return self.forward_features(self.encoding.encode(cfgs))

    def predict_mlp(self, cfgs: Sequence[SubnetConfig] | ConfigBatch) -> np.ndarray:
        """The MLP alone, without the anchor correction."""
        return self.forward_mlp(self.encoding.encode(cfgs))

    def forward_features(self, x: np.ndarray) -> np.ndarray:
        out = self.forward_mlp(x)
        if self.correction is not None:
            out += self.correction(x)
        return out

    def forward_mlp(self, x: np.ndarray) -> np.ndarray:
        h = x
        for w, b in zip(self.weights, self.biases):
            h = h @ w
            h += b
            np.maximum(h, 0.0, out=h)
        return (h @ self.w_out).astype(np.float64) + self.base_acc

    def corrected(self, cfgs: Sequence[SubnetConfig] | ConfigBatch, accs: Sequence[float] | np.ndarray,
                  length: float | None = None, noise: float | None = None, source: str = "") -> "AccuracyPredictor":
        """A copy with an `AnchorCorrection` fitted on measured (config, accuracy) pairs (this MLP's residuals
        on them); `length` and `noise` chosen by leave-one-out when not given."""
        from dataclasses import replace

        corr = AnchorCorrection.fit(self, cfgs, accs, length=length, noise=noise, source=source)
        return replace(self, correction=corr)

    def predict_torch(self, cfgs: Sequence[SubnetConfig] | ConfigBatch) -> np.ndarray:
        """The same prediction through a torch module (one forward); the reference for the numpy path."""
        import torch

        module = self.to_torch()
        x = self.encoding.encode(cfgs)
        with torch.no_grad():
            y = module(torch.from_numpy(x))
        out = y.double().numpy().reshape(-1) + self.base_acc
        return out + self.correction(x) if self.correction is not None else out

    def to_torch(self):
        """`torch.nn.Sequential` of the MLP without `base_acc` (float32, eval mode)."""
        import torch
        from torch import nn

        layers: list[nn.Module] = []
        for w, b in zip(self.weights, self.biases):
            lin = nn.Linear(w.shape[0], w.shape[1])
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(w.T.copy()))
                lin.bias.copy_(torch.from_numpy(b))
            layers += [lin, nn.ReLU()]
        out = nn.Linear(self.w_out.shape[0], 1, bias=False)
        with torch.no_grad():
            out.weight.copy_(torch.from_numpy(self.w_out[None, :].copy()))
        layers.append(out)
        return nn.Sequential(*layers).eval()

    # ---- the official weights ------------------------------------------------------------------------
    @classmethod
    def from_official(cls, path: str | Path, space: str = _OFFICIAL_SPACE) -> "AccuracyPredictor":
        """Load the published OFA predictor (`acc_predictor.pth`, a state dict; read with weights_only)."""
        import torch

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"accuracy predictor {path} does not exist")
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
            raise CheckpointError(f"cannot read accuracy predictor {path}: {' '.join(str(exc).split())[:200]}") from None
        if isinstance(sd, Mapping) and "state_dict" in sd:
            sd = sd["state_dict"]
        return cls.from_state_dict({k: v.detach().cpu().numpy() for k, v in sd.items()},
                                   AccuracyEncoding.official(), space, source=str(path))

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, np.ndarray], encoding: AccuracyEncoding, space: str,
                        source: str = "") -> "AccuracyPredictor":
        """Either official layout: the tutorial's `nn.Sequential` (`0.weight` … `6.bias`, the last bias being the
        offset) or the NAS module's (`layers.0.0.weight` … `layers.3.weight` + `base_acc`)."""
        linears = _official_linears(sd)
        if linears is None:
            raise CheckpointError(f"accuracy predictor {source or '(state dict)'} has unexpected keys: "
                                  f"{', '.join(sorted(sd)[:6])}")
        *hidden, (w_last, b_last, base) = linears
        if hidden[0][0].shape[1] != encoding.n_features:
            raise CheckpointError(f"accuracy predictor {source} takes {hidden[0][0].shape[1]} inputs; the encoding "
                                  f"has {encoding.n_features}")
        base_acc = float(np.asarray(base).reshape(-1)[0]) + (float(b_last.reshape(-1)[0]) if b_last is not None else 0.0)
        return cls(
            encoding=encoding,
            weights=[np.ascontiguousarray(w.T, dtype=np.float32) for w, _ in hidden],
            biases=[np.asarray(b, dtype=np.float32) for _, b in hidden],
            w_out=np.asarray(w_last, dtype=np.float32).reshape(-1),
            base_acc=base_acc, space=space, metadata={"source": source} if source else {},
        )

    # ---- training ------------------------------------------------------------------------------------
    @classmethod
    def fit(cls, cfgs: Sequence[SubnetConfig] | ConfigBatch, accs: Sequence[float] | np.ndarray,
            space: SearchSpace, *, rng: np.random.Generator | None = None, hidden: int = 400, n_layers: int = 3,
            epochs: int = 200, batch_size: int = 256, lr: float = 1e-3, weight_decay: float = 1e-4,
            val_fraction: float = 0.1, encoding: AccuracyEncoding | None = None,
            threads: int | None = 1) -> "AccuracyPredictor":
        """Train an MLP on (config, accuracy) pairs (accuracy as a fraction). `base_acc` is the training mean;
        the network learns the residual with MSE and Adam. RMSE on a held-out split goes in `metadata["fit"]`.
        `threads`: torch threads while training (restored after); a small MLP trains fastest on one (measured
        here: 3.4 s on one thread, 23 s on two of a busy 2-core machine)."""
        import torch

        saved_threads = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        try:
            return cls._fit(cfgs, accs, space, rng, hidden, n_layers, epochs, batch_size, lr, weight_decay,
                            val_fraction, encoding)
        finally:
            torch.set_num_threads(saved_threads)

    @classmethod
    def _fit(cls, cfgs, accs, space, rng, hidden, n_layers, epochs, batch_size, lr, weight_decay, val_fraction,
             encoding) -> "AccuracyPredictor":
        import torch

        rng = rng if rng is not None else np.random.default_rng(0)
        encoding = encoding or AccuracyEncoding.for_space(space)
        x = encoding.encode(cfgs)
        y = np.asarray(accs, dtype=np.float64).reshape(-1)
        if len(y) != len(x):
            raise InvalidConfigError(f"{len(x)} configs but {len(y)} accuracies")
        if len(y) < 2:
            raise InvalidConfigError("need at least 2 (config, accuracy) pairs to fit a predictor")
        order = rng.permutation(len(y))
        n_val = int(round(len(y) * val_fraction)) if len(y) >= 10 else 0
        val, train = order[:n_val], order[n_val:]
        base_acc = float(y[train].mean())

        torch_gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        dims = [encoding.n_features] + [hidden] * n_layers
        lins = []
        for i in range(n_layers):
            lin = torch.nn.Linear(dims[i], dims[i + 1])
            _init_linear(lin, torch_gen)
            lins += [lin, torch.nn.ReLU()]
        out = torch.nn.Linear(hidden, 1, bias=False)
        _init_linear(out, torch_gen)
        model = torch.nn.Sequential(*lins, out)
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
        xt = torch.from_numpy(x[train])
        yt = torch.from_numpy((y[train] - base_acc).astype(np.float32))
        model.train()
        for _ in range(epochs):
            perm = torch.randperm(len(train), generator=torch_gen)
            for start in range(0, len(train), batch_size):
                idx = perm[start:start + batch_size]
                loss = torch.nn.functional.mse_loss(model(xt[idx]).squeeze(1), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            sched.step()
        model.eval()
        sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
        pred = cls(
            encoding=encoding,
            weights=[np.ascontiguousarray(sd[f"{2 * i}.weight"].T) for i in range(n_layers)],
            biases=[sd[f"{2 * i}.bias"].copy() for i in range(n_layers)],
            w_out=sd[f"{2 * n_layers}.weight"].reshape(-1).copy(),
            base_acc=base_acc, space=space.name,
        )
        fit = {"n_train": int(len(train)), "n_val": int(n_val), "epochs": epochs,
               "train_rmse": _rmse(pred.forward_features(x[train]), y[train])}
        if n_val:
            fit["val_rmse"] = _rmse(pred.forward_features(x[val]), y[val])
        pred.metadata["fit"] = fit
        return pred

    # ---- persistence ---------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write `path` (.safetensors) and its metadata beside it (`.json`: space, encoding, base_acc); with a
        correction, its pairs too (`anchors_path`). An anchors file already there is kept: its pairs were
        measured on the supernet, not on these weights, and `load` fits the correction to whatever MLP it
        loads."""
        from safetensors.numpy import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"w_out": self.w_out, "base_acc": np.array([self.base_acc], dtype=np.float64)}
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            tensors[f"layers.{i}.weight"] = np.ascontiguousarray(w)
            tensors[f"layers.{i}.bias"] = np.ascontiguousarray(b)
        meta = self.describe()
        meta.pop("correction", None)  # the MLP's own metadata; the correction goes in its anchors file
        save_file(tensors, str(path), metadata={"ofa_bench": json.dumps(meta)})
        path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
        if self.correction is not None:  # the measured pairs; `load` fits the correction to these weights again
            anchors_path(path).write_text(json.dumps(self.correction.to_json(self.space), indent=1) + "\n")
        return path

    def describe(self) -> dict:
        out = {"format": "ofa-bench-accuracy-predictor", "version": FORMAT_VERSION, "space": self.space,
               "encoding": asdict(self.encoding), "base_acc": self.base_acc,
               "hidden": [int(w.shape[1]) for w in self.weights], "metadata": self.metadata}
        if self.correction is not None:
            out["correction"] = self.correction.describe()
        return out

    @classmethod
    def load(cls, path: str | Path, correct: bool = True) -> "AccuracyPredictor":
        """Read a predictor written by `save` (or the official `.pth`, recognised by its suffix). With
        `correct`, an anchors file beside it (`anchors_path`) adds its `AnchorCorrection`."""
        path = Path(path)
        pred = cls._load_mlp(path)
        anchors = anchors_path(path)
        if correct and anchors.is_file():
            pred.correction = AnchorCorrection.from_file(anchors, pred)
        return pred

    @classmethod
    def _load_mlp(cls, path: Path) -> "AccuracyPredictor":
        from safetensors import safe_open

        if path.suffix == ".pth":
            return cls.from_official(path)
        if not path.is_file():
            raise CheckpointError(f"accuracy predictor {path} does not exist")
        try:
            with safe_open(str(path), framework="numpy") as f:
                embedded = (f.metadata() or {}).get("ofa_bench")
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"cannot read accuracy predictor {path}: {' '.join(str(exc).split())[:200]}") from None
        side = path.with_suffix(".json")
        try:
            meta = json.loads(side.read_text()) if side.is_file() else json.loads(embedded or "null")
        except json.JSONDecodeError:
            raise CheckpointError(f"accuracy predictor metadata {side} is not valid JSON") from None
        if not isinstance(meta, dict) or meta.get("format") != "ofa-bench-accuracy-predictor":
            raise CheckpointError(f"{path} is not an ofa-bench accuracy predictor (no metadata)")
        if int(meta.get("version", 0)) > FORMAT_VERSION:
            raise CheckpointError(f"{path} has format version {meta['version']}, newer than this code ({FORMAT_VERSION})")
        enc = meta["encoding"]
        encoding = AccuracyEncoding(tuple(enc["ks_list"]), tuple(enc["expand_list"]), int(enc["n_stages"]),
                                    int(enc["max_depth"]), tuple(enc["resolution_grid"]))
        n = len(meta["hidden"])
        try:
            weights = [tensors[f"layers.{i}.weight"].astype(np.float32) for i in range(n)]
            biases = [tensors[f"layers.{i}.bias"].astype(np.float32) for i in range(n)]
            w_out = tensors["w_out"].astype(np.float32)
        except KeyError as exc:
            raise CheckpointError(f"accuracy predictor {path} lacks tensor {exc}") from None
        if weights[0].shape[0] != encoding.n_features:
            raise CheckpointError(f"accuracy predictor {path}: first layer takes {weights[0].shape[0]} inputs, "
                                  f"its encoding has {encoding.n_features}")
        return cls(encoding, weights, biases, w_out, float(meta["base_acc"]), meta.get("space", ""),
                   dict(meta.get("metadata") or {}))

    def check_space(self, space: SearchSpace) -> None:
        """Raise `CheckpointError` if this predictor cannot encode configs of `space`."""
        enc = self.encoding
        if (space.n_stages, space.max_depth) != (enc.n_stages, enc.max_depth):
            raise CheckpointError(f"accuracy predictor for {self.space or 'another space'} has "
                                  f"{enc.n_stages}x{enc.max_depth} block slots; {space.name} has "
                                  f"{space.n_stages}x{space.max_depth}")
        if not set(space.ks_list) <= set(enc.ks_list) or not set(space.expand_list) <= set(enc.expand_list):
            raise CheckpointError(f"accuracy predictor for {self.space or 'another space'} does not know the "
                                  f"kernel/expand choices of {space.name}")
        grid = enc.resolution_grid
        top = grid[-1] + (grid[-1] - grid[-2] if len(grid) > 1 else 1)  # the last bin's width, as the others
        if min(space.resolutions) < grid[0] or max(space.resolutions) >= top:
            raise CheckpointError(f"accuracy predictor for {self.space or 'another space'} covers resolutions "
                                  f"{grid[0]}..{grid[-1]}; {space.name} has {min(space.resolutions)}.."
                                  f"{max(space.resolutions)}")


def anchors_path(predictor_path: str | Path) -> Path:
    """The anchors file of a predictor: `x.acc.safetensors` -> `x.acc-anchors.json` (beside `x.acc-data.json`)."""
    p = Path(predictor_path)
    return p.with_name(p.stem + "-anchors.json")


def choice_distance(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(N, M) number of choices in which encoded configs differ: a kernel, an expand ratio or the resolution
    counts one each, a block slot that only one of them uses counts one (one-hot rows: half the L1 distance)."""
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    d = x.sum(1)[:, None] + y.sum(1)[None, :] - 2.0 * (x @ y.T)
    return np.maximum(d, 0.0) * 0.5


@dataclass
class AnchorCorrection:
    """A correction of a predictor's residuals on measured (config, accuracy) pairs, by kernel ridge regression:
    `delta(x) = exp(-choice_distance(x, X) / length) @ alpha`, `alpha = (K + noise * I)^-1 (y - mlp(X))`.

    Why: the MLP is fitted on uniformly random subnets, and the sandwich rule trains the largest and smallest
    subnets on every step; subnets within a few choices of them are far better (or, at the bottom, better)
    than what random ones teach the MLP, and random sampling practically never draws them (no random subnet of
    the shipped 600 is closer than 19 choices to the largest). So the MLP predicts the ends towards the mean.
    The correction moves predictions near a measured subnet towards its measurement, with a pull that falls by
    e every `length` choices away and vanishes far from every pair, where the MLP stands alone. Both numbers
    are chosen by leave-one-out error over all pairs (`fit`); `metadata` keeps that error and any held-out
    check. It corrects only where pairs were measured: it does not make the MLP better elsewhere."""

    features: np.ndarray  # (M, n_features) encoded configs of the pairs
    alpha: np.ndarray  # (M,)
    length: float
    noise: float
    configs: tuple[str, ...]
    accuracies: np.ndarray  # measured, as fractions
    metadata: dict = field(default_factory=dict)

    LENGTHS = (2.0, 4.0, 8.0, 12.0, 16.0, 24.0, 32.0)
    NOISES = (1e-4, 1e-3, 1e-2, 1e-1)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.exp(-choice_distance(x, self.features) / self.length).astype(np.float64) @ self.alpha

    @classmethod
    def fit(cls, predictor: "AccuracyPredictor", cfgs: Sequence[SubnetConfig] | ConfigBatch,
            accs: Sequence[float] | np.ndarray, length: float | None = None, noise: float | None = None,
            source: str = "", metadata: Mapping | None = None) -> "AnchorCorrection":
        """Fit on `predictor`'s MLP residuals; a `length` or `noise` not given is chosen on a grid by the
        closed-form leave-one-out RMSE over all pairs."""
        b = cfgs if isinstance(cfgs, ConfigBatch) else ConfigBatch.from_configs(list(cfgs))
        x = predictor.encoding.encode(b)
        y = np.asarray(accs, dtype=np.float64).reshape(-1)
        if len(y) != len(x) or len(y) < 2:
            raise InvalidConfigError(f"an anchor correction needs >= 2 (config, accuracy) pairs, got {len(x)} "
                                     f"configs and {len(y)} accuracies")
        resid = y - predictor.forward_mlp(x)
        dist = choice_distance(x, x).astype(np.float64)
        best = None
        for ell in ([length] if length else cls.LENGTHS):
            kern = np.exp(-dist / ell)
            vals, vecs = np.linalg.eigh(kern) if not noise else (None, None)
            for lam in ([noise] if noise else cls.NOISES):
                inv = np.linalg.inv(kern + lam * np.eye(len(y))) if vals is None else (vecs / (vals + lam)) @ vecs.T
                alpha = inv @ resid
                loo = alpha / np.diag(inv)  # measured minus the prediction without that pair
                rmse = float(np.sqrt(np.mean(loo ** 2)))
                if best is None or rmse < best[0]:
                    best = (rmse, ell, lam, alpha, loo)
        rmse, ell, lam, alpha, loo = best
        meta = {**dict(metadata or {}), "source": source, "n_pairs": int(len(y)),
                "loo_rmse_points": round(100 * rmse, 4),
                "mlp_rmse_points": round(100 * float(np.sqrt(np.mean(resid ** 2))), 4)}
        strings = tuple(c.to_string() for c in b.to_configs())
        return cls(x, alpha, float(ell), float(lam), strings, y, meta)

    def describe(self) -> dict:
        return {"method": "kernel ridge on the MLP's residuals", "length": self.length, "noise": self.noise,
                **self.metadata}

    def to_json(self, space: str = "") -> dict:
        """The anchors file's form: the pairs inline, with the chosen `length` and `noise`."""
        return {"format": ANCHORS_FORMAT, "version": 1, "space": space, "length": self.length, "noise": self.noise,
                "metadata": self.metadata,
                "pairs": [{"config": c, "top1": float(a)} for c, a in zip(self.configs, self.accuracies)]}

    @classmethod
    def from_file(cls, path: str | Path, predictor: "AccuracyPredictor") -> "AnchorCorrection":
        """Read an anchors file: its `pairs`, plus the pairs of the data file it names in `with` (a
        `predictor_data` JSON beside it), fitted with its `length` and `noise`."""
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"cannot read accuracy anchors {path}: {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != ANCHORS_FORMAT:
            raise CheckpointError(f"{path} is not an ofa-bench accuracy anchors file")
        texts = [p["config"] for p in doc.get("pairs", [])]
        accs = [float(p["top1"]) for p in doc.get("pairs", [])]
        if doc.get("with"):
            data_path = path.with_name(doc["with"])
            try:
                data = json.loads(data_path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise CheckpointError(f"cannot read {data_path}, named by {path}: {exc}") from None
            texts += list(data["configs"])
            accs += [float(v) for v in data["val_top1"]]
        depth = predictor.encoding.max_depth
        cfgs = [SubnetConfig.from_string(t, depth) for t in texts]
        meta = dict(doc.get("metadata") or {})
        meta.setdefault("source", path.name)
        corr = cls.fit(predictor, cfgs, accs, length=float(doc["length"]), noise=float(doc["noise"]),
                       source=meta.pop("source"), metadata=meta)
        return corr


def _official_linears(sd: Mapping[str, np.ndarray]):
    """[(w, b) per hidden layer] + [(w_last, b_last or None, base)] from either official key layout."""
    if "0.weight" in sd:
        idx = sorted(int(k.split(".")[0]) for k in sd if k.endswith(".weight"))
        if len(idx) < 2 or any(f"{i}.bias" not in sd for i in idx[:-1]):
            return None
        hidden = [(sd[f"{i}.weight"], sd[f"{i}.bias"]) for i in idx[:-1]]
        last = idx[-1]
        return hidden + [(sd[f"{last}.weight"], sd.get(f"{last}.bias"), np.zeros(1))]
    if "layers.0.0.weight" in sd and "base_acc" in sd:
        n = sum(1 for k in sd if k.startswith("layers.") and k.endswith(".0.weight"))
        hidden = [(sd[f"layers.{i}.0.weight"], sd[f"layers.{i}.0.bias"]) for i in range(n)]
        if f"layers.{n}.weight" not in sd:
            return None
        return hidden + [(sd[f"layers.{n}.weight"], sd.get(f"layers.{n}.bias"), sd["base_acc"])]
    return None


def _init_linear(lin, gen) -> None:
    """PyTorch's default Linear init, drawn from our seeded generator."""
    import torch

    bound = 1.0 / np.sqrt(lin.in_features)
    with torch.no_grad():
        lin.weight.uniform_(-bound, bound, generator=gen)
        if lin.bias is not None:
            lin.bias.uniform_(-bound, bound, generator=gen)


def _rmse(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.sqrt(np.mean((pred - y) ** 2)))


def anchors_root(shared: Path | None = None) -> Path:
    """Where the published anchors live: `<shared>/anchors` for a given `shared`, else `$OFA_BENCH_ANCHORS`,
    else the `shared/anchors` folder beside the repository checkout."""
    if shared is None and os.environ.get(ANCHORS_ENV):
        return Path(os.environ[ANCHORS_ENV])
    return (shared or Path(__file__).resolve().parents[2] / "shared") / "anchors"


def default_predictor_path(space_name: str, shared: Path | None = None) -> Path | None:
    """Where the default predictor of a space lives: the shipped one (`ofa_core/weights/<space>.acc.safetensors`),
    or for ofa-mbv3-w1.2 the published one among the anchors (`anchors_root`). None if there is none."""
    shipped = Path(__file__).resolve().parent / "weights" / f"{space_name}.acc.safetensors"
    if shipped.is_file():
        return shipped
    if space_name == _OFFICIAL_SPACE:
        anchor = anchors_root(shared) / "ofa-mbv3-w12-note10" / "acc_predictor.pth"
        if anchor.is_file():
            return anchor
    return None

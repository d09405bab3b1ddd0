"""Every distinct lookup-table entry a search space can use, per resolution, named with the official keys.

The official OFA tables (e.g. the Note10 ones) key each layer by its shapes:
`Conv-input:224x224x3-output:112x112x24`, `expanded_conv-input:HxWxC-output:HxWxC-expand:MID-kernel:K-stride:S-
idskip:I-se:E-hs:H` (MID = absolute middle channels, idskip = residual), `Conv_1-…`, `AvgPool2D-…`, `Conv_2-…`,
`Logits-input:1x1xC-output:N`. A subnet's latency is the first conv + first block + its active blocks + the
four tail entries; `subnet_keys` lists exactly those, and is the reference the vectorised predictor must match.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ofa_core.errors import InvalidConfigError
from ofa_core.space import BlockSpec, SearchSpace, SubnetConfig

#: entry kinds, in network order
KINDS = ("first_conv", "first_block", "mbconv", "final_expand", "pool", "feature_mix", "logits")
#: kinds that every subnet at a resolution uses once (everything except the elastic blocks)
FIXED_KINDS = ("first_conv", "first_block", "final_expand", "pool", "feature_mix", "logits")


@dataclass(frozen=True)
class Entry:
    """One table entry: its key and the shapes needed to build it as a standalone module.

    `in_hw`/`out_hw` are square spatial sizes; for `mbconv` entries `spec` is the first block slot that uses
    this key, with `kernel`, `expand` (ratio) and `mid_channels` (absolute); for other kinds they are None.
    """

    resolution: int
    key: str
    kind: str
    in_hw: int
    in_channels: int
    out_hw: int
    out_channels: int
    spec: BlockSpec | None = None
    kernel: int | None = None
    expand: int | None = None
    mid_channels: int | None = None

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """NCHW input of the standalone module (batch 1); the classifier sees the pooled (1, C, 1, 1) map."""
        return (1, self.in_channels, self.in_hw, self.in_hw)


def _hw(h: int, c: int) -> str:
    return f"{h}x{h}x{c}"


def mbconv_key(space: SearchSpace, spec: BlockSpec, r: int, kernel: int, expand: int) -> str:
    """Official key of block slot `spec` with (kernel, expand ratio) at input resolution `r`."""
    sizes = space.feature_size(r)
    h_in = sizes[spec.stage] if spec.index == 0 else sizes[spec.stage + 1]
    h_out = sizes[spec.stage + 1]
    mid = space.middle_channels(spec.in_channels, expand)
    return (f"expanded_conv-input:{_hw(h_in, spec.in_channels)}-output:{_hw(h_out, spec.out_channels)}"
            f"-expand:{mid}-kernel:{kernel}-stride:{spec.stride}-idskip:{int(spec.residual)}"
            f"-se:{int(spec.se)}-hs:{int(spec.act == 'h_swish')}")


def fixed_entries(space: SearchSpace, r: int) -> list[Entry]:
    """The six entries every subnet at resolution `r` uses once, in network order."""
    sizes = space.feature_size(r)
    h0, h_last = sizes[0], sizes[-1]
    c0, c1 = space.first_conv_width, space.first_block_width
    last_w = space.stages[-1].width
    fe, fm = space.final_expand_width, space.feature_mix_width
    first_res = space.first_conv_width == space.first_block_width
    return [
        Entry(r, f"Conv-input:{_hw(r, space.in_channels)}-output:{_hw(h0, c0)}", "first_conv",
              r, space.in_channels, h0, c0),
        Entry(r, (f"expanded_conv-input:{_hw(h0, c0)}-output:{_hw(h0, c1)}-expand:{c0}-kernel:3-stride:1"
                  f"-idskip:{int(first_res)}-se:0-hs:{int(space.first_block_act == 'h_swish')}"),
              "first_block", h0, c0, h0, c1, kernel=3, expand=1, mid_channels=c0),
        Entry(r, f"Conv_1-input:{_hw(h_last, last_w)}-output:{_hw(h_last, fe)}", "final_expand",
              h_last, last_w, h_last, fe),
        Entry(r, f"AvgPool2D-input:{_hw(h_last, fe)}-output:{_hw(1, fe)}", "pool", h_last, fe, 1, fe),
        Entry(r, f"Conv_2-input:{_hw(1, fe)}-output:{_hw(1, fm)}", "feature_mix", 1, fe, 1, fm),
        Entry(r, f"Logits-input:{_hw(1, fm)}-output:{space.n_classes}", "logits", 1, fm, 1, space.n_classes),
    ]


def mbconv_entries(space: SearchSpace, r: int) -> list[Entry]:
    """Distinct elastic-block entries at resolution `r` (slots with equal shapes share one entry)."""
    sizes = space.feature_size(r)
    seen: dict[str, Entry] = {}
    for spec in space.blocks():
        h_in = sizes[spec.stage] if spec.index == 0 else sizes[spec.stage + 1]
        for k in space.ks_list:
            for e in space.expand_list:
                key = mbconv_key(space, spec, r, k, e)
                if key not in seen:
                    seen[key] = Entry(r, key, "mbconv", h_in, spec.in_channels, sizes[spec.stage + 1],
                                      spec.out_channels, spec=spec, kernel=k, expand=e,
                                      mid_channels=space.middle_channels(spec.in_channels, e))
    return list(seen.values())


def candidates(space: SearchSpace, resolutions: Iterable[int] | None = None) -> list[Entry]:
    """Every distinct entry of `space` at each resolution (default: all of the space's), in a stable order."""
    res = list(space.resolutions if resolutions is None else resolutions)
    for r in res:
        if r not in space.resolutions:
            raise InvalidConfigError(f"{space.name}: resolution {r} is not in the space ({min(space.resolutions)}..{max(space.resolutions)})")
    out: list[Entry] = []
    for r in res:
        fixed = fixed_entries(space, r)
        out.extend(fixed[:2] + mbconv_entries(space, r) + fixed[2:])
    return out


def subnet_keys(space: SearchSpace, cfg: SubnetConfig) -> list[str]:
    """The table keys a subnet's latency sums over, in network order (a plain loop: the reference)."""
    space.validate(cfg)
    fixed = [e.key for e in fixed_entries(space, cfg.r)]
    specs = space.blocks()
    blocks = [mbconv_key(space, specs[i], cfg.r, cfg.ks[i], cfg.e[i]) for i in cfg.active_slots()]
    return fixed[:2] + blocks + fixed[2:]


def subnet_entries(space: SearchSpace, cfg: SubnetConfig) -> list[Entry]:
    """Entries of `subnet_keys`, for per-stage breakdowns."""
    by_key = {e.key: e for e in candidates(space, [cfg.r])}
    return [by_key[k] for k in subnet_keys(space, cfg)]


def keys_by_resolution(entries: Sequence[Entry]) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for e in entries:
        out.setdefault(e.resolution, set()).add(e.key)
    return out

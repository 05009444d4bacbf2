"""VAE tiling without seams, and the rule for when a VAE pass is tiled at all.

diffusers' tiling (``vae.enable_tiling()``) runs each tile through the encoder or decoder on
its own, so every GroupNorm normalises with that tile's statistics: a dark tile and a light
tile come out with different brightness and colour, which shows as rectangles and seams
(issue 20). Here every tile is normalised with the same statistics: first those of the whole
image shrunk to one tile, then those summed over a pass through all tiles; overlapping tiles
are blended with linear ramps. A tiled pass thus costs about two untiled ones. The engine
tiles only when memory needs it (see ``tile_size``); diffusers' own tiling is off during a run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.vram import MB, vae_pass_mb

log = logging.getLogger(__name__)

OFF, WHEN_NEEDED, ALWAYS = "off", "when needed", "always"
MIN_TILE_LATENT = 32  # smaller tiles are mostly border (the demo VAE's own size is 16)
OVERLAP = 0.25  # of a tile's side, shared with each neighbour and blended
HEADROOM = 1.5  # the estimate is not yet checked on a card: ask for half as much again
RESERVE_MB = 256.0  # left free for the allocator and whatever else runs


def scale_factor(vae: Any) -> int:
    """Pixels per latent pixel along a side (8 for SD, 4 for the demo model)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def can_tile(vae: Any) -> bool:
    """Whether this VAE has the encoder/decoder layout tiled here (AutoencoderKL)."""
    return all(hasattr(vae, name) for name in ("encoder", "decoder", "config")) and hasattr(
        vae.config, "block_out_channels"
    )


def pass_mb(vae: Any, width: int, height: int, images: int) -> float:
    """Estimated memory (MB) of one VAE encode or decode of `images` images at width×height."""
    element = torch.finfo(vae.dtype).bits // 8
    one = vae_pass_mb(
        width, height, element, channels=vae.config.block_out_channels[0], factor=scale_factor(vae)
    )
    return one * images


def available_mb(device: str) -> float | None:
    """Memory the next allocations can use on a CUDA device (free + cached by torch), or None."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return (free + cached) / MB


def tile_size(
    vae: Any,
    device: str,
    width: int,
    height: int,
    images: int,
    mode: str,
    available: float | None = None,
) -> int | None:
    """The tile side in pixels for a VAE pass at width×height, or None to run it whole.

    OFF never tiles; ALWAYS (memory already ran out) tiles at the VAE's own tile size or less
    (never under MIN_TILE_LATENT latent pixels);
    WHEN_NEEDED tiles on a GPU only when the whole pass would not fit in `available` MB (free
    GPU memory when not given), with the largest tiles that fit. A CPU has RAM to spare.
    """
    if mode == OFF or not can_tile(vae):
        return None
    if available is None and device.startswith("cuda"):
        available = available_mb(device)
    step, smallest = 8 * scale_factor(vae), MIN_TILE_LATENT * scale_factor(vae)
    native = max(smallest, int(vae.config.sample_size) // step * step)
    if available is None:  # no GPU: RAM is not what runs out
        tile = native if mode == ALWAYS else None
    else:
        budget = (available - RESERVE_MB) / HEADROOM
        if mode == WHEN_NEEDED and pass_mb(vae, width, height, images) <= budget:
            return None
        fits = smallest
        while fits < max(width, height) and pass_mb(vae, fits + step, fits + step, 1) <= budget:
            fits += step
        tile = min(native, fits) if mode == ALWAYS else max(native, fits)
    return tile if tile is not None and tile < max(width, height) else None


def _forward_attribute(module: nn.Module) -> str:
    """The attribute that holds the module's own forward (accelerate's offload hooks wrap it)."""
    return "_old_forward" if "_old_forward" in module.__dict__ else "forward"


def _spread(weight: torch.Tensor, count: int) -> torch.Tensor:
    """A tile's (latent-grid) weights at a feature map of `count` pixels, flattened."""
    scale = math.isqrt(count // weight.numel())
    if scale * scale * weight.numel() != count:
        return weight.mean().expand(count)
    return weight.repeat_interleave(scale, 0).repeat_interleave(scale, 1).flatten()


class SharedNorms:
    """Makes every GroupNorm of a module normalise tiles with statistics of the whole image.

    ``measure`` takes them from a small copy of the image; ``collecting`` then sums each
    norm's input over all tiles (weighted by the blend weights, so the overlaps count once),
    which gives statistics close to those of an untiled pass for the final tile pass.
    """

    def __init__(self, module: nn.Module) -> None:
        self.norms = [m for m in module.modules() if isinstance(m, nn.GroupNorm)]
        self.stats: dict[nn.GroupNorm, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.sums: dict[nn.GroupNorm, list[torch.Tensor]] = {}
        self.calls: dict[nn.GroupNorm, int] = {}
        self.weight: torch.Tensor | None = None  # the current tile's blend weights when summing

    def measure(self, run: Callable[[], Any]) -> None:
        """Record each norm's own statistics (mean, variance per sample and group) during run()."""
        self.stats = {m: [] for m in self.norms}

        def record(norm: nn.GroupNorm, args: tuple) -> None:
            grouped = args[0].reshape(args[0].shape[0], norm.num_groups, -1).float()
            var, mean = torch.var_mean(grouped, dim=-1, unbiased=False)
            self.stats[norm].append((mean, var))

        hooks = [m.register_forward_pre_hook(record) for m in self.norms]
        try:
            run()
        finally:
            for hook in hooks:
                hook.remove()

    def tile(self, weight: torch.Tensor | None = None) -> None:
        """Start a tile; with `weight`, its inputs are summed into the next statistics."""
        self.weight = weight
        self.calls = dict.fromkeys(self.norms, 0)

    def adopt_sums(self) -> None:
        """Replace the statistics with the weighted sums collected over the tiles."""
        for norm, sums in self.sums.items():
            self.stats[norm] = [
                (first / count, (second / count - (first / count) ** 2).clamp(min=0))
                for count, first, second in zip(*[iter(sums)] * 3, strict=True)
            ]
        self.sums = {}

    def _normalise(self, norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        index = self.calls[norm]
        self.calls[norm] = index + 1
        mean, var = self.stats[norm][index % len(self.stats[norm])]
        grouped = x.reshape(x.shape[0], norm.num_groups, -1).float()
        if self.weight is not None:
            self._add(norm, index, grouped, x.shape[1] // norm.num_groups)
        grouped = (grouped - mean[..., None]) * torch.rsqrt(var[..., None] + norm.eps)
        out = grouped.reshape(x.shape).to(x.dtype)
        if norm.affine:
            shape = (1, x.shape[1]) + (1,) * (x.dim() - 2)
            out = out * norm.weight.view(shape) + norm.bias.view(shape)
        return out

    def _add(self, norm: nn.GroupNorm, index: int, grouped: torch.Tensor, per_group: int) -> None:
        assert self.weight is not None
        pixels = grouped.shape[-1] // per_group
        weight = _spread(self.weight.to(grouped.device), pixels).repeat(per_group)
        sums = self.sums.setdefault(norm, [])
        if len(sums) <= 3 * index:
            sums += [torch.zeros((), dtype=torch.float64, device=grouped.device), 0.0, 0.0]
        sums[3 * index] = sums[3 * index] + weight.sum().double()
        sums[3 * index + 1] = sums[3 * index + 1] + (grouped * weight).sum(-1).double()
        sums[3 * index + 2] = sums[3 * index + 2] + (grouped.square() * weight).sum(-1).double()

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Every norm uses the shared statistics inside the block."""
        saved = {}
        for norm in self.norms:
            name = _forward_attribute(norm)
            saved[norm] = (name, norm.__dict__.get(name))
            setattr(norm, name, lambda x, *_, norm=norm: self._normalise(norm, x))
        try:
            yield
        finally:
            for norm, (name, old) in saved.items():
                _put_back(norm, name, old)


def _put_back(module: nn.Module, name: str, old: Any) -> None:
    """Restore an instance attribute replaced for the duration (delete it if there was none)."""
    if old is None:
        delattr(module, name)
    else:
        setattr(module, name, old)


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile starts covering `length`, evenly spread, neighbours sharing at least `overlap`."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def _ramp(start: int, size: int, previous_end: int | None, next_start: int | None) -> torch.Tensor:
    """Blend weights along one side of a tile: rising over the overlap with each neighbour."""
    weights = torch.ones(size)
    if previous_end is not None and previous_end > start:
        shared = previous_end - start
        weights[:shared] = (torch.arange(shared) + 0.5) / shared
    if next_start is not None and next_start < start + size:
        shared = start + size - next_start
        weights[size - shared :] = torch.minimum(
            weights[size - shared :], (torch.arange(shared).flip(0) + 0.5) / shared
        )
    return weights


def _stats_sample(x: torch.Tensor, tile: int, step_in: int) -> torch.Tensor:
    """The input shrunk to one tile (area-averaged): what the shared statistics are measured on."""
    height, width = x.shape[-2] // step_in, x.shape[-1] // step_in
    shrink = min(1.0, tile / max(height, width))
    small = (max(1, int(height * shrink)) * step_in, max(1, int(width * shrink)) * step_in)
    return F.interpolate(x.float(), size=small, mode="area").to(x.dtype)


def _tiled(
    part: nn.Module,
    run: Callable,
    x: torch.Tensor,
    tile: int,
    factor: int,
    encode: bool,
    **kwargs: Any,
) -> torch.Tensor:
    """run(x) computed in overlapping tiles of `tile` latent pixels, blended, norms shared."""
    step_in, step_out = (factor, 1) if encode else (1, factor)
    height, width = x.shape[-2] // step_in, x.shape[-1] // step_in
    overlap = max(1, round(tile * OVERLAP))
    rows, cols = _starts(height, tile, overlap), _starts(width, tile, overlap)
    tiles = []
    for i, top in enumerate(rows):
        down = _ramp(top, min(tile, height - top), _end(rows, i - 1, tile), _at(rows, i + 1))
        for j, left in enumerate(cols):
            across = _ramp(left, min(tile, width - left), _end(cols, j - 1, tile), _at(cols, j + 1))
            tiles.append((top, left, torch.outer(down, across)))
    norms = SharedNorms(part)
    norms.measure(lambda: run(_stats_sample(x, tile, step_in), **kwargs))
    out: torch.Tensor | None = None
    total = torch.zeros(height, width)
    for top, left, weight in tiles:
        total[top : top + weight.shape[0], left : left + weight.shape[1]] += weight
    tiles = [
        (top, left, w / total[top : top + w.shape[0], left : left + w.shape[1]])
        for top, left, w in tiles
    ]
    with norms.installed():
        for top, left, weight in tiles:  # a pass only to measure the whole image
            norms.tile(weight)
            run(_piece(x, top, left, weight.shape, step_in), **kwargs)
        norms.adopt_sums()
        for top, left, weight in tiles:
            norms.tile()
            result = run(_piece(x, top, left, weight.shape, step_in), **kwargs)
            if out is None:
                out = result.new_zeros(*result.shape[:2], height * step_out, width * step_out)
            big = weight.repeat_interleave(step_out, 0).repeat_interleave(step_out, 1)
            ys = slice(top * step_out, top * step_out + big.shape[0])
            xs = slice(left * step_out, left * step_out + big.shape[1])
            out[..., ys, xs] += result * big.to(result.device, result.dtype)
    assert out is not None
    return out


def _end(starts: list[int], index: int, tile: int) -> int | None:
    """Where the tile at `index` ends (None before the first)."""
    return starts[index] + tile if index >= 0 else None


def _at(starts: list[int], index: int) -> int | None:
    """Where the tile at `index` starts (None after the last)."""
    return starts[index] if index < len(starts) else None


def _piece(x: torch.Tensor, top: int, left: int, size: Any, step: int) -> torch.Tensor:
    """The input under a tile (its position and size in latent pixels)."""
    return x[..., top * step : (top + size[0]) * step, left * step : (left + size[1]) * step]


@contextmanager
def vae_pass(vae: Any, tile_px: int | None) -> Iterator[None]:
    """For one pipeline call: diffusers' own tiling off; seamless tiles of tile_px when set."""
    own = getattr(vae, "use_tiling", None)
    with ExitStack() as stack:
        if can_tile(vae) and own is not None:
            vae.use_tiling = False
            stack.callback(setattr, vae, "use_tiling", own)
        if tile_px and can_tile(vae):
            factor = scale_factor(vae)
            latent_tile = max(1, tile_px // factor)
            for part, encode in ((vae.encoder, True), (vae.decoder, False)):
                stack.enter_context(_tiled_forward(part, latent_tile, factor, encode))
            log.info("VAE pass in seamless tiles of %d px", latent_tile * factor)
        yield


@contextmanager
def _tiled_forward(part: nn.Module, tile: int, factor: int, encode: bool) -> Iterator[None]:
    """Make the encoder's or decoder's forward tile inputs larger than `tile` latent pixels."""
    own, saved = part.forward, part.__dict__.get("forward")

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        size = max(x.shape[-2:]) // (factor if encode else 1)
        if size <= tile or args:
            return own(x, *args, **kwargs)
        return _tiled(part, own, x, tile, factor, encode, **kwargs)

    part.forward = forward
    try:
        yield
    finally:
        _put_back(part, "forward", saved)

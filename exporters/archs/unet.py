"""The ε-prediction UNet of improved-diffusion (Nichol & Dhariwal 2021) and guided-diffusion
(Dhariwal & Nichol 2021, "ADM"), rebuilt in plain torch with the parameter names of the original
code, so that their published checkpoints load with `load_state_dict(strict=True)`.

One class covers both repositories. guided-diffusion is a superset of improved-diffusion: with
`resblock_updown=False`, `num_head_channels=-1` and `use_new_attention_order=False` (the defaults
here) it builds exactly improved-diffusion's network and state-dict keys. The two published layouts
then differ only in *which* blocks exist, never in how a block names its tensors:

- improved-diffusion resamples with `Downsample`/`Upsample` (a strided 3×3 conv, key `op`;
  nearest ×2 then a 3×3 conv, key `conv`); guided-diffusion with `resblock_updown=True` (ADM)
  resamples inside a residual block instead (keys `in_layers.*`, `emb_layers.*`, `out_layers.*`,
  the resampling itself holds no weights: average pooling / nearest neighbour);
- improved-diffusion fixes the number of attention heads (`num_heads`, 4 in its scripts);
  ADM fixes the channels per head (`num_head_channels` 64). Both store one 1×1 `qkv` conv of
  3C outputs and one `proj_out`, but read the 3C channels in different orders: "legacy" order
  (head-major: each head's q, k, v are adjacent) in improved-diffusion and in guided-diffusion by
  default, q-block/k-block/v-block with `use_new_attention_order=True`. The weights do not say
  which, so the flag must match the training code.

Network (per level of `channel_mult`, at downsampling rate ds = 1, 2, 4, ...): `num_res_blocks`
residual blocks (GroupNorm-SiLU-conv, timestep embedding added or applied as scale/shift, then
GroupNorm-SiLU-dropout-conv, plus a skip), each followed by self-attention when ds is in
`attention_resolutions`, then a downsampling block except after the last level; a middle block
(res, attention, res); the mirror image upwards with one extra residual block per level, each
block fed the concatenation of its input and the matching encoder activation; GroupNorm-SiLU-conv
out. The timestep enters through a sinusoidal embedding of the float timestep value (cos half
first), two linear layers with SiLU between, width 4·model_channels.

Arithmetic follows the originals where it changes numbers: GroupNorm(32 groups, eps 1e-5), the
attention scale 1/√√ch applied to q and k separately, softmax in float32. `num_groups` (default
32, as published) exists so that small models (fewer than 32 channels) can be built too.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: [cos(t·f_i), sin(t·f_i)], with
    f_i = max_period^(-i/half), i < half = dim // 2; a zero column pads an odd dim."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepSequential(nn.Sequential):
    """A Sequential whose residual blocks also receive the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour ×2, then (with_conv) a 3×3 conv named `conv`."""

    def __init__(self, channels: int, with_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class Downsample(nn.Module):
    """A stride-2 3×3 conv named `op` (with_conv), else 2×2 average pooling."""

    def __init__(self, channels: int, with_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.op = (nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)
                   if with_conv else nn.AvgPool2d(2, stride=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    """Residual block conditioned on the timestep embedding; optionally resamples (guided-diffusion's
    `resblock_updown`): the input and the normalized activations are resampled, without weights,
    between the first GroupNorm-SiLU and the first conv."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None,
                 use_scale_shift_norm: bool, num_groups: int, resample: str | None = None):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(nn.GroupNorm(num_groups, channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        if resample == "up":
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif resample == "down":
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = None
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels))
        self.out_layers = nn.Sequential(nn.GroupNorm(num_groups, out_channels), nn.SiLU(),
                                        nn.Dropout(p=dropout),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        # The originals zero-initialise the last conv; irrelevant once weights are loaded, and left
        # at PyTorch's default here so that a freshly built network is not the identity map.
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.h_upd is not None:
            h = self.in_layers[1](self.in_layers[0](x))
            h = self.in_layers[2](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            for layer in self.out_layers[1:]:
                h = layer(h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all spatial positions, residual; tensors `norm`, `qkv` (a 1×1
    Conv1d to 3C channels), `proj_out`."""

    def __init__(self, channels: int, num_heads: int, num_head_channels: int,
                 new_order: bool, num_groups: int):
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"{channels} attention channels are not divisible by "
                                 f"num_head_channels {num_head_channels}")
            self.num_heads = channels // num_head_channels
        self.new_order = new_order
        self.norm = nn.GroupNorm(num_groups, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        x = x.reshape(b, c, height * width)
        qkv = self.qkv(self.norm(x))
        length = qkv.shape[2]
        ch = c // self.num_heads
        if self.new_order:   # [q of all heads | k of all heads | v of all heads]
            q, k, v = (part.reshape(b * self.num_heads, ch, length) for part in qkv.chunk(3, dim=1))
        else:                # legacy: [q k v of head 0 | q k v of head 1 | ...]
            q, k, v = qkv.reshape(b * self.num_heads, 3 * ch, length).split(ch, dim=1)
        scale = 1.0 / math.sqrt(math.sqrt(ch))
        weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale).float(), dim=-1)
        h = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, length)
        return (x + self.proj_out(h)).reshape(b, c, height, width)


class UNetModel(nn.Module):
    """ε-prediction UNet; `forward(x, t)` with x N×C×H×W and t a float tensor of N timesteps (the
    value the embedding takes: already rescaled when the model was trained with rescale_timesteps).

    `attention_resolutions` are downsampling rates (the scripts' "16,8" at image_size 64 means
    rates 4 and 8: `attention_rates` converts). `out_channels` is 2·in_channels for models that
    learn their variance.
    """

    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks: int, attention_resolutions: Sequence[int], dropout: float = 0.0,
                 channel_mult: Sequence[float] = (1, 2, 4, 8), conv_resample: bool = True,
                 num_heads: int = 1, num_head_channels: int = -1, num_heads_upsample: int = -1,
                 use_scale_shift_norm: bool = False, resblock_updown: bool = False,
                 use_new_attention_order: bool = False, num_groups: int = 32):
        super().__init__()
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        self.image_size = image_size
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.model_channels = model_channels
        emb_dim = 4 * model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(),
                                        nn.Linear(emb_dim, emb_dim))

        def res(ch_in: int, ch_out: int | None = None, resample: str | None = None) -> ResBlock:
            return ResBlock(ch_in, emb_dim, dropout, ch_out, use_scale_shift_norm, num_groups, resample)

        def attn(ch: int, heads: int) -> AttentionBlock:
            return AttentionBlock(ch, heads, num_head_channels, use_new_attention_order, num_groups)

        ch = first_ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skip_channels = [ch]   # the channels of every encoder activation the decoder concatenates
        rate = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if rate in attention_resolutions:
                    layers.append(attn(ch, num_heads))
                self.input_blocks.append(TimestepSequential(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepSequential(
                    res(ch, ch, "down") if resblock_updown else Downsample(ch, conv_resample)))
                skip_channels.append(ch)
                rate *= 2

        self.middle_block = TimestepSequential(res(ch), attn(ch, num_heads), res(ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), int(mult * model_channels))]
                ch = int(mult * model_channels)
                if rate in attention_resolutions:
                    layers.append(attn(ch, num_heads_upsample))
                if level and i == num_res_blocks:
                    layers.append(res(ch, ch, "up") if resblock_updown else Upsample(ch, conv_resample))
                    rate //= 2
                self.output_blocks.append(TimestepSequential(*layers))

        self.out = nn.Sequential(nn.GroupNorm(num_groups, ch), nn.SiLU(),
                                 nn.Conv2d(first_ch, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


def attention_rates(image_size: int, resolutions: str | Sequence[int]) -> tuple[int, ...]:
    """The scripts' attention_resolutions (feature-map sizes, "32,16,8") as downsampling rates."""
    if isinstance(resolutions, str):
        resolutions = [int(r) for r in resolutions.split(",") if r.strip()]
    return tuple(image_size // int(r) for r in resolutions)


def default_channel_mult(image_size: int) -> tuple[float, ...]:
    """The channel multipliers guided-/improved-diffusion's scripts pick from the image size."""
    table = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4),
             64: (1, 2, 3, 4), 32: (1, 2, 2, 2)}
    if image_size not in table:
        raise ValueError(f"no default channel_mult for image_size {image_size}; give channel_mult")
    return table[image_size]

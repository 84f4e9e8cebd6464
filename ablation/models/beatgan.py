"""BeatGAN (Zhou et al., IJCAI 2019): a 1-D conv autoencoder generator and a conv discriminator,
with every block's output available before and after its activation, in one forward pass.

Shapes for a beat of 320 samples (ndf = ngf = 32, nz = 50):

    encoder  x (B, nc, 320) -> 32x160 -> 64x80 -> 128x40 -> 256x20 -> 512x10 -> latent (B, nz, 1)
    decoder  latent -> 512x10 -> 256x20 -> 128x40 -> 64x80 -> 32x160 -> recon (B, nc, 320)
    disc     the encoder's layout with one output: logit (B,); features = block 4 post (B, 512, 10)

Taps are named ``<net>.<block>.<point>``: net in {enc, dec, disc}, block 0-5, point ``pre`` (the
block's output before its activation: after BatchNorm where there is one, i.e. Heo et al.'s pre-ReLU
position) or ``post`` (after the activation). Block 5 is each net's last layer: its ``pre`` is the
latent / the tanh input / the logit, its ``post`` the latent / the reconstruction / sigmoid(logit).
Activations are never in place, so a ``pre`` tensor is not overwritten by the activation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from torch import nn

from ablation.models import register_family
from ablation.train.step import Step


class Widths(Protocol):
    """What the model needs of a config: three ints (`ablation.config.ModelConfig` has them)."""

    ndf: int
    ngf: int
    nz: int

NETS = ("enc", "dec", "disc")
N_BLOCKS = 6
TAP_NAMES = [f"{net}.{b}.{p}" for net in NETS for b in range(N_BLOCKS) for p in ("pre", "post")]
BEAT_LEN = 320


def tap_length(tap: str) -> int:
    """The length L of tap ``<net>.<block>.<point>`` for a 320-sample beat, whatever the widths:
    enc/disc halve it per block (160 ... 10) and end at 1 (the latent, the logit); dec doubles it
    from 10 to 320."""
    net, block, _ = tap.split(".")
    b = int(block)
    if net == "dec":
        return 10 * 2 ** b
    return 1 if b == N_BLOCKS - 1 else BEAT_LEN // 2 ** (b + 1)


class Block(nn.Module):
    """conv -> optional BatchNorm -> activation; records its pre/post outputs into `taps`."""

    def __init__(self, conv: nn.Module, bn: bool, act: nn.Module | None):
        super().__init__()
        self.conv = conv
        self.bn = nn.BatchNorm1d(conv.out_channels) if bn else None
        self.act = act if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor, taps: dict | None, name: str) -> torch.Tensor:
        pre = self.conv(x)
        if self.bn is not None:
            pre = self.bn(pre)
        post = self.act(pre)
        if taps is not None:
            taps[f"{name}.pre"] = pre
            taps[f"{name}.post"] = post
        return post


class Stack(nn.Module):
    """A sequence of six Blocks whose taps are named ``<prefix>.<i>.<point>``."""

    def __init__(self, prefix: str, blocks: list[Block]):
        super().__init__()
        self.prefix = prefix
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, taps: dict | None = None) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x, taps, f"{self.prefix}.{i}")
        return x


def conv_stack(prefix: str, nc: int, ndf: int, n_out: int, out_act: nn.Module | None) -> Stack:
    """BeatGAN's encoder layout: 320 -> 10 in five stride-2 convs, then a k=10 conv to n_out x 1."""
    lrelu = lambda: nn.LeakyReLU(0.2)  # noqa: E731
    blocks = [Block(nn.Conv1d(nc, ndf, 4, 2, 1, bias=False), bn=False, act=lrelu())]
    for i in range(4):
        blocks.append(Block(nn.Conv1d(ndf * 2 ** i, ndf * 2 ** (i + 1), 4, 2, 1, bias=False), True, lrelu()))
    blocks.append(Block(nn.Conv1d(ndf * 16, n_out, 10, 1, 0, bias=False), bn=False, act=out_act))
    return Stack(prefix, blocks)


def deconv_stack(nc: int, ngf: int, nz: int) -> Stack:
    """BeatGAN's decoder: nz x 1 -> 16 ngf x 10, four stride-2 up-convs, then -> nc x 320 + tanh."""
    blocks = [Block(nn.ConvTranspose1d(nz, ngf * 16, 10, 1, 0, bias=False), True, nn.ReLU())]
    for i in range(4):
        c = ngf * 16 // 2 ** i
        blocks.append(Block(nn.ConvTranspose1d(c, c // 2, 4, 2, 1, bias=False), True, nn.ReLU()))
    blocks.append(Block(nn.ConvTranspose1d(ngf, nc, 4, 2, 1, bias=False), bn=False, act=nn.Tanh()))
    return Stack("dec", blocks)


class Generator(nn.Module):
    def __init__(self, nc: int, ndf: int, ngf: int, nz: int):
        super().__init__()
        self.encoder = conv_stack("enc", nc, ndf, nz, out_act=None)
        self.decoder = deconv_stack(nc, ngf, nz)

    @property
    def nz(self) -> int:
        """The latent code's width."""
        return self.encoder.blocks[-1].conv.out_channels

    def forward(self, x: torch.Tensor, taps: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, nc, 320) -> (reconstruction (B, nc, 320), latent (B, nz, 1))."""
        z = self.encoder(x, taps)
        return self.decoder(z, taps), z


class Discriminator(nn.Module):
    def __init__(self, nc: int, ndf: int):
        super().__init__()
        self.net = conv_stack("disc", nc, ndf, 1, out_act=nn.Sigmoid())

    def forward(self, x: torch.Tensor, taps: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, nc, 320) -> (logit (B,), features (B, 16 ndf, 10): block 4 after its activation)."""
        own = {} if taps is None else taps
        self.net(x, own)
        return own["disc.5.pre"].flatten(), own["disc.4.post"]


def init_weights(m: nn.Module) -> None:
    """BeatGAN's init: Xavier-normal convolutions; BatchNorm weight ~ N(1, 0.02), bias 0."""
    if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)):
        nn.init.xavier_normal_(m.weight)
    elif isinstance(m, nn.BatchNorm1d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


@register_family("beatgan")
@dataclass
class BeatGAN:
    """A generator/discriminator pair built from a ModelConfig: the ``beatgan`` family (the default)."""

    G: Generator
    D: Discriminator
    taps: ClassVar[tuple[str, ...]] = tuple(TAP_NAMES)  # every enc, dec and disc position
    train_fields: ClassVar[tuple[str, ...]] = ()  # train.* keys only this family reads
    step: ClassVar[type[Step]] = Step

    @classmethod
    def build(cls, cfg: Widths, nc: int) -> "BeatGAN":
        """G and D of widths ``cfg.ndf``, ``cfg.ngf``, ``cfg.nz`` (any object with those ints) for
        ``nc`` leads, with BeatGAN's initialisation."""
        model = cls(Generator(nc, cfg.ndf, cfg.ngf, cfg.nz), Discriminator(nc, cfg.ndf))
        model.G.apply(init_weights)
        model.D.apply(init_weights)
        return model

    def to(self, device) -> "BeatGAN":
        self.G.to(device)
        self.D.to(device)
        return self

    def n_params(self) -> dict[str, int]:
        return {"G": sum(p.numel() for p in self.G.parameters()),
                "D": sum(p.numel() for p in self.D.parameters())}


def anomaly_score(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Per-beat mean squared reconstruction error: (B, C, L) x2 -> (B,)."""
    return (x - recon).pow(2).flatten(1).mean(1)


def bn_before(stack: Stack, tap: str) -> nn.BatchNorm1d | None:
    """The BatchNorm that produces a ``pre`` tap of `stack` (None where the block has none)."""
    _, block, point = tap.split(".")
    return stack.blocks[int(block)].bn if point == "pre" else None

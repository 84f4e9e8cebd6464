"""BeatGAN shapes, sizes and taps (pre/post activation, one pass)."""
import torch
from torch import nn

from ablation.config import ModelConfig
from ablation.models.beatgan import TAP_NAMES, BeatGAN, anomaly_score


def test_shapes_and_paper_sizes():
    m = BeatGAN.build(ModelConfig(), nc=1)
    x = torch.randn(4, 1, 320)
    recon, z = m.G(x)
    logit, feat = m.D(x)
    assert recon.shape == x.shape and z.shape == (4, 50, 1)
    assert logit.shape == (4,) and feat.shape == (4, 512, 10)
    n = m.n_params()
    assert abs(n["G"] - 1.91e6) / 1.91e6 < 0.01 and abs(n["D"] - 0.70e6) / 0.70e6 < 0.01
    assert anomaly_score(x, recon).shape == (4,)


def test_every_tap_in_one_pass_pre_differs_from_post():
    m = BeatGAN.build(ModelConfig(ndf=8, ngf=8, nz=10), nc=2)
    calls = {"n": 0}
    for mod in m.G.modules():
        if isinstance(mod, (nn.Conv1d, nn.ConvTranspose1d)):
            mod.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    taps: dict = {}
    x = torch.randn(3, 2, 320)
    m.G(x, taps)
    m.D(x, taps)
    assert calls["n"] == 12  # each of G's 12 convolutions ran exactly once for all 24 G taps
    assert sorted(taps) == sorted(TAP_NAMES)
    for net in ("enc", "dec", "disc"):
        for b in range(5):
            pre, post = taps[f"{net}.{b}.pre"], taps[f"{net}.{b}.post"]
            assert (pre < 0).any()  # negatives exist, so the activation must have changed them
            assert not torch.equal(pre, post)
            slope = 0.0 if net == "dec" else 0.2
            torch.testing.assert_close(post, torch.where(pre > 0, pre, slope * pre))
    torch.testing.assert_close(taps["disc.5.post"].flatten(), torch.sigmoid(taps["disc.5.pre"].flatten()))
    torch.testing.assert_close(taps["dec.5.post"], torch.tanh(taps["dec.5.pre"]))


def test_pre_tap_is_differentiable_and_bn_initialised():
    m = BeatGAN.build(ModelConfig(ndf=4, ngf=4, nz=8), nc=1)
    taps: dict = {}
    m.D(torch.randn(2, 1, 320), taps)
    taps["disc.3.pre"].pow(2).sum().backward()
    assert m.D.net.blocks[3].conv.weight.grad.abs().sum() > 0
    bn = m.D.net.blocks[3].bn
    assert torch.all(bn.bias == 0) and abs(bn.weight.mean().item() - 1) < 0.05

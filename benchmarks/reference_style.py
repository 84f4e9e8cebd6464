"""Reference implementation for `benchmarks/bench.py`, written in the style of the original code.

This is the yardstick our training loop is measured against, NOT code to reuse. It is written the
way BeatGAN's public code and the earlier student project (NOTES.md section 2) were organised:

- the networks are plain ``nn.Sequential`` stacks (BeatGAN's layer shapes: ndf / ngf / nz, beats of
  320 samples), the discriminator split into ``features`` (all but the last conv) and ``classifier``
  (last conv + sigmoid), trained with ``BCELoss`` on probabilities;
- data come from a ``torch.utils.data.DataLoader`` over a ``TensorDataset`` built from a numpy array
  (batch 64, shuffled, last partial batch dropped, ``num_workers=0``), each batch copied to the device;
- every loss is read with ``.item()`` after every batch (per-batch history and the D re-init check);
- in the G step D is not frozen (its weight gradients are computed and thrown away at the next D step)
  and D's features on the real beat are computed with autograd on;
- the distillation step takes the discriminator's feature at each tapped block by re-running a
  truncated ``nn.Sequential(*layers[:k])`` from the input, once per tap (six passes per network);
- the KD term is computed from anomaly scores turned into numpy arrays and back into tensors.
  THIS IS WRONG (the earlier project's defect): the tensors made from numpy carry no gradient, so
  the KD term changes the logged loss and nothing else. It is kept here on purpose, because the
  point of this file is to measure what that style costs, not to train well.

Generosities to the reference (they make our measured speed-ups conservative): the teacher runs
under ``torch.no_grad()``, and the DataLoader has no worker processes to start.

Weights are copied from an `ablation.models.beatgan.BeatGAN` (`from_beatgan`) so that the reference
and our loop do the same arithmetic on the same numbers; tests/integration/test_bench.py checks that they do.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

TAPPED_BLOCKS = (0, 1, 2, 3, 4, 5)


# ----------------------------------------------------------------------------------------------
# Networks as Sequentials
# ----------------------------------------------------------------------------------------------
def encoder_layers(nc: int, ndf: int, n_out: int) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv1d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2)]
    for i in range(4):
        layers += [nn.Conv1d(ndf * 2 ** i, ndf * 2 ** (i + 1), 4, 2, 1, bias=False),
                   nn.BatchNorm1d(ndf * 2 ** (i + 1)), nn.LeakyReLU(0.2)]
    layers += [nn.Conv1d(ndf * 16, n_out, 10, 1, 0, bias=False)]
    return layers


def decoder_layers(nc: int, ngf: int, nz: int) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.ConvTranspose1d(nz, ngf * 16, 10, 1, 0, bias=False),
                               nn.BatchNorm1d(ngf * 16), nn.ReLU()]
    for i in range(4):
        c = ngf * 16 // 2 ** i
        layers += [nn.ConvTranspose1d(c, c // 2, 4, 2, 1, bias=False), nn.BatchNorm1d(c // 2), nn.ReLU()]
    layers += [nn.ConvTranspose1d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh()]
    return layers


class RefGenerator(nn.Module):
    def __init__(self, nc: int, ndf: int, ngf: int, nz: int):
        super().__init__()
        self.encoder = nn.Sequential(*encoder_layers(nc, ndf, nz))
        self.decoder = nn.Sequential(*decoder_layers(nc, ngf, nz))

    def forward(self, x):
        latent = self.encoder(x)
        return self.decoder(latent), latent


class RefDiscriminator(nn.Module):
    def __init__(self, nc: int, ndf: int):
        super().__init__()
        layers = encoder_layers(nc, ndf, 1)
        self.features = nn.Sequential(*layers[:-1])
        self.classifier = nn.Sequential(layers[-1], nn.Sigmoid())

    def forward(self, x):
        features = self.features(x)
        classifier = self.classifier(features)
        return classifier.view(-1, 1).squeeze(1), features


def _conv_bn(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d, nn.BatchNorm1d))]


def copy_weights(src: nn.Module, dst: nn.Module) -> None:
    """Copy conv/BN parameters and buffers between two nets with the same layers in the same order."""
    a, b = _conv_bn(src), _conv_bn(dst)
    if len(a) != len(b):
        raise ValueError(f"{len(a)} conv/BN layers in the source, {len(b)} in the destination")
    with torch.no_grad():
        for s, d in zip(a, b):
            d.load_state_dict(s.state_dict())


def from_beatgan(model, nc: int, ndf: int, ngf: int, nz: int) -> tuple[RefGenerator, RefDiscriminator]:
    """Reference G and D with the weights of an `ablation.models.beatgan.BeatGAN`."""
    G, D = RefGenerator(nc, ndf, ngf, nz), RefDiscriminator(nc, ndf)
    copy_weights(model.G, G)
    copy_weights(model.D, D)
    return G, D


def weights_init(m):
    name = m.__class__.__name__
    if name.find("Conv") != -1:
        nn.init.xavier_normal_(m.weight)
    elif name.find("BatchNorm") != -1:
        m.weight.data.normal_(1.0, 0.02)
        m.bias.data.fill_(0)


# ----------------------------------------------------------------------------------------------
# The earlier project's distillation pieces
# ----------------------------------------------------------------------------------------------
def tap_ends(D: RefDiscriminator) -> list[int]:
    """For each block, the slice end that stops right before its activation (pre-ReLU tap)."""
    layers = list(D.features.children()) + list(D.classifier.children())
    return [i for i, layer in enumerate(layers) if isinstance(layer, (nn.LeakyReLU, nn.Sigmoid))]


def feature_at(D: RefDiscriminator, x, block: int):
    """The pre-activation output of `block`: a truncated Sequential re-run from the input."""
    layers = list(D.features.children()) + list(D.classifier.children())
    return nn.Sequential(*layers[:tap_ends(D)[block]])(x)


def at(f):
    return F.normalize(f.pow(2).mean(1).view(f.size(0), -1))


def at_loss(f_s, f_t):
    return (at(f_s) - at(f_t)).pow(2).mean()


def kd_loss_numpy(score_s: np.ndarray, score_t: np.ndarray, T: float):
    """KL(softmax(t/(sd T)) || softmax(s/(sd T))) * T^2 over the batch's anomaly scores, sd the
    teacher scores' spread (our score_kl), from numpy arrays.
    WRONG ON PURPOSE (see the module docstring): no gradient reaches the student."""
    sd = max(float(np.std(score_t)), 1e-12)
    s = torch.tensor(score_s / sd)
    t = torch.tensor(score_t / sd)
    return F.kl_div(F.log_softmax(s / T, dim=0), F.softmax(t / T, dim=0), reduction="sum") * T * T


# ----------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------
class ReferenceBeatGAN:
    """BeatGAN training in the original style; with `teacher` set, the earlier project's
    distillation: KD on anomaly scores plus attention transfer at each tapped D block on the fake
    (L2 on the length-1 logit, where attention transfer is constant)."""

    def __init__(self, G: RefGenerator, D: RefDiscriminator, train_x: np.ndarray, device="cpu",
                 batchsize: int = 64, lr: float = 2e-4, beta1: float = 0.5, w_adv: float = 1.0,
                 teacher: tuple[RefGenerator, RefDiscriminator] | None = None, T: float = 4.0,
                 w_kd: float = 1.0, w_feat: float = 1.0, taps=TAPPED_BLOCKS, seed: int = 0):
        self.device = torch.device(device)
        self.netg, self.netd = G.to(self.device), D.to(self.device)
        self.batchsize, self.w_adv = batchsize, w_adv
        self.teacher = teacher
        if teacher is not None:
            for net in teacher:
                net.to(self.device)
                net.eval()
        self.T, self.w_kd, self.w_feat, self.taps = T, w_kd, w_feat, taps
        self.bce_criterion = nn.BCELoss()
        self.mse_criterion = nn.MSELoss()
        self.optimizerD = torch.optim.Adam(self.netd.parameters(), lr=lr, betas=(beta1, 0.999))
        self.optimizerG = torch.optim.Adam(self.netg.parameters(), lr=lr, betas=(beta1, 0.999))
        self.real_label, self.fake_label = 1.0, 0.0
        train_y = np.zeros(len(train_x))
        dataset = torch.utils.data.TensorDataset(torch.Tensor(train_x), torch.Tensor(train_y))
        self.dataloader = torch.utils.data.DataLoader(dataset, batch_size=batchsize, shuffle=True,
                                                      num_workers=0, drop_last=True,
                                                      generator=torch.Generator().manual_seed(seed))
        self.train_hist: dict[str, list[float]] = {"D_loss": [], "G_loss": [], "G_rec": [], "G_adv": [], "KD": [],
                                                   "FD": []}

    # -- one batch --------------------------------------------------------------------------------
    def set_input(self, data):
        self.input = data[0].to(self.device)

    def optimize(self):
        self.fake, self.latent_i = self.netg(self.input)
        self.update_netd()
        self.update_netg()
        if self.err_d.item() < 5e-6:
            self.reinitialize_netd()

    def update_netd(self):
        self.netd.zero_grad()
        self.out_d_real, self.feat_real = self.netd(self.input)
        self.out_d_fake, self.feat_fake = self.netd(self.fake.detach())
        n = self.out_d_real.size(0)
        self.err_d_real = self.bce_criterion(self.out_d_real, torch.full((n,), self.real_label, device=self.device))
        self.err_d_fake = self.bce_criterion(self.out_d_fake, torch.full((n,), self.fake_label, device=self.device))
        self.err_d = self.err_d_real + self.err_d_fake
        self.err_d.backward()
        self.optimizerD.step()

    def update_netg(self):
        self.netg.zero_grad()
        self.out_g, self.feat_fake = self.netd(self.fake)
        _, self.feat_real = self.netd(self.input)
        self.err_g_adv = self.mse_criterion(self.feat_fake, self.feat_real)
        self.err_g_rec = self.mse_criterion(self.fake, self.input)
        self.err_g = self.err_g_rec + self.err_g_adv * self.w_adv
        self.err_kd = torch.zeros(())
        self.err_fd = torch.zeros(())
        if self.teacher is not None:
            self.err_kd, self.err_fd = self.distill_terms()
            self.err_g = self.err_g + self.w_kd * self.err_kd + self.w_feat * self.err_fd
        self.err_g.backward()
        self.optimizerG.step()

    def distill_terms(self):
        t_g, t_d = self.teacher
        with torch.no_grad():
            t_fake, _ = t_g(self.input)
        # anomaly scores as numpy arrays (the earlier project's form; see kd_loss_numpy)
        s_score = torch.mean((self.input - self.fake) ** 2, dim=(1, 2)).detach().cpu().numpy()
        t_score = torch.mean((self.input - t_fake) ** 2, dim=(1, 2)).detach().cpu().numpy()
        err_kd = kd_loss_numpy(s_score, t_score, self.T).to(self.device)
        err_fd = torch.zeros((), device=self.device)
        for k in self.taps:
            f_s = feature_at(self.netd, self.fake, k)
            with torch.no_grad():
                f_t = feature_at(t_d, self.fake, k)
            # attention transfer is constant on the length-1 logit (block 5): an L2 term there
            err_fd = err_fd + (at_loss(f_s, f_t.detach()) if k < 5 else F.mse_loss(f_s, f_t.detach()))
        return err_kd, err_fd

    def reinitialize_netd(self):
        self.netd.apply(weights_init)

    def get_errors(self):
        return {"err_d": self.err_d.item(), "err_g": self.err_g.item(), "err_g_rec": self.err_g_rec.item(),
                "err_g_adv": self.err_g_adv.item(), "err_kd": self.err_kd.item(), "err_fd": self.err_fd.item()}

    # -- one epoch ------------------------------------------------------------------------------
    def train_epoch(self, max_batches: int | None = None) -> float:
        """One pass over the DataLoader; returns its wall seconds."""
        self.netg.train()
        self.netd.train()
        t0 = time.perf_counter()
        for i, data in enumerate(self.dataloader):
            if max_batches is not None and i >= max_batches:
                break
            self.set_input(data)
            self.optimize()
            errors = self.get_errors()
            self.train_hist["D_loss"].append(errors["err_d"])
            self.train_hist["G_loss"].append(errors["err_g"])
            self.train_hist["G_rec"].append(errors["err_g_rec"])
            self.train_hist["G_adv"].append(errors["err_g_adv"])
            self.train_hist["KD"].append(errors["err_kd"])
            self.train_hist["FD"].append(errors["err_fd"])
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    def data_epoch(self) -> float:
        """Wall seconds of one pass over the DataLoader with no compute: the data path alone."""
        t0 = time.perf_counter()
        for data in self.dataloader:
            self.set_input(data)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

"""Anobeat (Ou, Li, Guo and Wang, "Anobeat: Anomaly Detection for Electrocardiography Beat
Signals", IEEE DSC 2020, doi:10.1109/DSC50466.2020.00029): the second detector family, ``model.family: anobeat``.

An autoencoder regularised adversarially by two discriminators, one on the latent space and one on
the beat ("visual space"), trained with the reconstruction error and feature constraints; a beat is
scored by its reconstruction error. Layout (anomalib style): `torch_model` (G, the two
discriminators, the taps), `loss` (the latent-space terms), `step` (one training update).

Why this family (docs/anobeat.md): of the detectors in NOTES section 7 it has the best evidence of
clearing test AUC 0.95 on this project's protocol. It reports ROC-AUC 0.960 on MIT-BIH
intra-patient, "+1.61 % over the most competitive baseline": 0.9447 x 1.0161 = 0.960, i.e. BeatGAN's
own five-fold figure (Zhou et al. 2019, Table 3), so the comparison was made on BeatGAN's split and
beats. EB-GAME (Park et al. 2024, arXiv 2404.15333) reports AUROC about 0.97 on MIT-BIH, but with a
ViT-style masked autoencoder whose split we could not tie to BeatGAN's, and MMAE-ECG (arXiv
2502.05494) works on unsegmented ECG, not this protocol's beats. Anobeat is BeatGAN's networks plus
a small latent discriminator: an epoch costs about a BeatGAN epoch on CPU, and every BeatGAN tap
exists in it, so feature distillation between the two families works position for position.
"""
from ablation.models.anobeat.torch_model import Anobeat, AnobeatD, LatentDiscriminator

__all__ = ["Anobeat", "AnobeatD", "LatentDiscriminator"]

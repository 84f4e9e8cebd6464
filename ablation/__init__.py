"""Knowledge-distillation ablation platform for BeatGAN ECG anomaly detectors."""
__version__ = "0.1.0"

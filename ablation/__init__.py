"""Knowledge-distillation ablation platform for BeatGAN ECG anomaly detectors."""
from ablation import numerics

numerics.pin()  # before anything imports torch: every process of the platform runs the pinned kernels
__version__ = "0.1.0"

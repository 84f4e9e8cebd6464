"""The numeric path of every process the platform starts, pinned so that a run key gives the same
bits on any x86 CPU (`../shared/NOTES.md` section 9).

PyTorch's CPU build picks its kernels by the CPU's instruction set at run time, in three places:
oneDNN (convolutions) by ``ONEDNN_MAX_CPU_ISA``, ATen's vectorised kernels (batch norm,
element-wise ops, reductions, Adam) by ``ATEN_CPU_CAPABILITY``, and MKL's GEMM by ``MKL_CBWR``
(its conditional numerical reproducibility). Left free, an AVX-512 CPU trains a BeatGAN to other
weights than an AVX2 one (0.004 test AUC apart at full scale). `pin` caps all three at AVX2, which
every x86 CPU this project meets has, before torch is imported: ``import ablation`` calls it, and
child processes inherit the environment. The run's intra-op thread count is ``train.threads``
(part of the run's identity: it changes the order of reductions). ``ABLATION_NUMERICS=native``
leaves the kernels free (benchmarks measure the cap's cost with it); such runs carry another key.
"""
from __future__ import annotations

import hashlib
import os
import platform
import re
import sys
from pathlib import Path

PINNED = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2,STRICT",
          "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
REVISION = 1  # raised when the pinned path changes what a run computes
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


class NumericsError(RuntimeError):
    """torch was imported before the numeric path could be pinned."""


def native() -> bool:
    """Whether this process was asked to leave the kernels free (``ABLATION_NUMERICS=native``)."""
    return os.environ.get("ABLATION_NUMERICS", "pinned") == "native"


def pin() -> None:
    """Pin the kernels' ISA for this process and its children. Effective only before torch is
    imported (oneDNN and ATen read their variables once): where torch came first, training
    refuses to start (`check`)."""
    if not native() and "torch" not in sys.modules:
        os.environ.update(PINNED)


def check() -> None:
    """Raise `NumericsError` when this process does not run on the pinned path."""
    if native():
        return
    import torch
    wrong = [k for k, v in PINNED.items() if os.environ.get(k) != v]
    capability = torch.backends.cpu.get_cpu_capability()
    if wrong or capability not in ("AVX2", "DEFAULT"):
        what = ", ".join(wrong) or f"ATen capability {capability}"
        raise NumericsError(f"torch was imported before `ablation` pinned its CPU kernels ({what} not pinned): "
                            f"import ablation first, or set {' '.join(f'{k}={v}' for k, v in PINNED.items())}")


def mode() -> str:
    """The numeric path, as it enters every run's identity: ``avx2-r<REVISION>`` or ``native``."""
    return "native" if native() else f"avx2-r{REVISION}"


def deterministic(threads: int) -> None:
    """Set the per-run knobs of the pinned path: `threads` intra-op threads and deterministic
    algorithms (cuDNN's deterministic kernels on CUDA)."""
    import torch
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def cpu_model() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def isa_flags() -> str:
    """The CPU's flags among those that change which kernels run (space-separated)."""
    flags = set()
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return " ".join(f for f in ISA_FLAGS if f in flags)


def onednn_version() -> str:
    import torch
    found = re.search(r"MKL-DNN v([0-9.]+)", torch.__config__.show())
    return found.group(1) if found else "none"


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def record(threads: int) -> dict[str, str]:
    """What a run records of the machine and numeric path (MLflow tags ``numerics.*``)."""
    import torch
    return {"numerics.mode": mode(), "numerics.cpu_model": cpu_model(), "numerics.isa_flags": isa_flags(),
            "numerics.onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "(free)"),
            "numerics.aten_capability": torch.backends.cpu.get_cpu_capability(),
            "numerics.mkl_cbwr": os.environ.get("MKL_CBWR", "(free)"), "numerics.torch": torch.__version__,
            "numerics.onednn": onednn_version(),
            "numerics.threads": str(threads)}


def weights_hash(state: dict) -> str:
    """SHA-256 over the G and D state dicts (names, shapes, dtypes and bytes, in name order)."""
    h = hashlib.sha256()
    for net in ("G", "D"):
        for name, t in sorted(state[net].items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{net}.{name}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()

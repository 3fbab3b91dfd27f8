"""Facts about the machine (platform, versions, GPUs, disk) and the traps that cost a Kaggle session.

Step 1 writes them to ``environment.json``; step 4 reads the precision and batch-size advice. Torch is
imported lazily so that step 1 can report a missing or broken torch instead of crashing on import.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import importlib.metadata
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from aetune.config import RECONSTRUCTION, Config, DataConfig, schema_families
from aetune.errors import AetuneError
from aetune.paths import KAGGLE_WORKING

ENVIRONMENT_FILE = "environment.json"
GIB = 1024**3
KAGGLE_QUOTA_GB = 20.0
"""Kaggle keeps at most 20 GB of /kaggle/working; the disk under it reports far more free space."""
MIN_FREE_DISK_GB = 10.0
"""VA-VAE weights (~4 GB, step 2) plus a stage's checkpoints (~1.6 GB) and room; ``--config`` projects it exactly."""
PROTECTED = frozenset({"torch", "torchvision"})
"""Never installed or upgraded: Kaggle and Colab ship them built for their CUDA driver."""
REPORTED_PACKAGES = (
    "torch",
    "torchvision",
    "pytorch-lightning",
    "lightning",
    "timm",
    "lpips",
    "huggingface-hub",
    "scikit-image",
    "scikit-learn",
    "pytorch-fid",
    "numpy",
)
CU126_INDEX = "https://download.pytorch.org/whl/cu126"
"""CUDA 12.6 torch builds still include Pascal (sm_60) kernels; newer CUDA builds dropped them."""
PASCAL_TORCH_INSTALL = f"pip install torch==2.14.* torchvision==0.29.* --index-url {CU126_INDEX}"
"""The last build that runs a P100: PyTorch 2.15 publishes no CUDA 12.6 wheels, and its CUDA 12.8+/13 wheels
have no sm_60 kernels. torchvision 0.29 is the release paired with torch 2.14 (pinned together: an unmatched
pair fails to import torchvision)."""
_ARCH = re.compile(r"^(sm|compute)_(\d+)([a-z]?)$")
_NETWORK_ERROR = re.compile(
    r"Failed to establish a new connection|Temporary failure in name resolution|Name or service not known|"
    r"Network is unreachable|Max retries exceeded|ProxyError|Read timed out|Could not fetch URL",
    re.IGNORECASE,
)


@dataclass
class GpuFact:
    """One CUDA device as torch sees it."""

    index: int
    name: str
    capability: tuple[int, int]  # (major, minor): T4 (7, 5), P100 (6, 0), A100 (8, 0), H100 (9, 0)
    memory_gb: float  # total device memory, GiB


def gpu_facts() -> list[GpuFact]:
    """Every CUDA device torch can see; [] without CUDA (or when torch cannot initialise it)."""
    import torch

    if not torch.cuda.is_available():
        return []
    facts = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        facts.append(GpuFact(i, p.name, (p.major, p.minor), round(p.total_memory / GIB, 2)))
    return facts


def _arch_list() -> list[str]:
    """The CUDA architectures this torch build has kernels for (``torch.cuda.get_arch_list()``)."""
    import torch

    return list(torch.cuda.get_arch_list())


def arch_supported(capability: tuple[int, int], arch_list: list[str] | None = None) -> bool:
    """Whether a GPU of ``capability`` can run this torch build's kernels.

    A cubin ``sm_XY`` runs on devices of the same major version and minor >= Y (``sm_XYa`` only on
    X.Y exactly); PTX ``compute_XY`` is JIT-compiled for any device of capability >= X.Y.
    """
    arch_list = _arch_list() if arch_list is None else arch_list
    major, minor = capability
    for arch in arch_list:
        m = _ARCH.match(arch)
        if m is None:
            continue
        kind, num, suffix = m.groups()
        a_major, a_minor = divmod(int(num), 10)
        if kind == "compute":
            ok = (a_major, a_minor) <= (major, minor)
        elif suffix == "a":
            ok = (a_major, a_minor) == (major, minor)
        else:
            ok = a_major == major and a_minor <= minor
        if ok:
            return True
    return False


def _probe_cuda(index: int) -> str | None:
    """Run a tiny op on ``cuda:index``; the first line of the error, or None when it works."""
    import torch

    try:
        x = torch.ones(8, device=f"cuda:{index}")
        (x * 2).sum().item()
    except RuntimeError as e:  # CUDA errors (torch.AcceleratorError included) are RuntimeErrors
        return str(e).strip().splitlines()[0]
    return None


def _torch_version() -> str:
    """``torch.__version__`` with its CUDA tag (``2.6.0+cu124``), which the metadata version lacks."""
    import torch

    return torch.__version__


def assert_gpus_usable(gpus: list[GpuFact], arch_list: list[str] | None = None) -> None:
    """Raise when a visible GPU cannot run this torch: no kernels for its architecture, or CUDA errors.

    Raises:
        AetuneError: with the ways out (e.g. P100 on a torch without sm_60 kernels).
    """
    arch_list = _arch_list() if arch_list is None else arch_list
    bad = [g for g in gpus if not arch_supported(g.capability, arch_list)]
    if bad:
        names = ", ".join(f"GPU {g.index} {g.name} (sm_{g.capability[0]}{g.capability[1]})" for g in bad)
        sm = "sm_{}{}".format(*bad[0].capability)
        if bad[0].capability < (7, 0):  # Pascal and older: only the CUDA 12.6 builds, up to torch 2.14, have kernels
            build = (
                f"install the last torch build with {sm} kernels, torch 2.14 for CUDA 12.6 (newer builds cannot run "
                f"this GPU): {PASCAL_TORCH_INSTALL} (then restart the session)"
            )
        else:
            build = f"install a newer torch build with {sm} kernels (https://pytorch.org/get-started/locally/)"
        raise AetuneError(
            f"{names}: torch {_torch_version()} has no kernels for it (built for "
            f"{' '.join(arch_list) or 'no CUDA architecture'}). Two ways out: choose the accelerator "
            f'"GPU T4 x2" in the Kaggle notebook settings, or {build}'
        )
    for g in gpus:
        err = _probe_cuda(g.index)
        if err is not None:
            raise AetuneError(
                f"CUDA sees GPU {g.index} ({g.name}) but cannot use it: {err}. Restart the session; if it "
                "persists, the driver and this torch build do not match"
            )


def advise_precision(gpus: list[GpuFact]) -> tuple[str, str]:
    """Lightning precision for these GPUs (the weakest one decides under DDP), with the reason.

    Returns:
        ("bf16-mixed" | "16-mixed" | "32", reason).
    """
    if not gpus:
        return "32", "no CUDA GPU: CPU runs in fp32"
    weakest = min(gpus, key=lambda g: g.capability)
    cap = "{}.{}".format(*weakest.capability)
    # No parentheses in a reason: step 4 prints it inside its own, "precision 16-mixed (<reason>)".
    if weakest.capability >= (8, 0):
        return "bf16-mixed", f"{weakest.name}, compute {cap}, has bf16 tensor cores: no loss scaling needed"
    if weakest.capability >= (7, 0):
        return "16-mixed", (
            f"{weakest.name}, compute {cap}, has fp16 tensor cores but no native bf16 "
            "- torch.cuda.is_bf16_supported may say True there, but it is emulated and slow - so fp16 with loss scaling"
        )
    return "32", f"{weakest.name}, compute {cap}, has no tensor cores: mixed precision gains little"


def advise_batch_size(gpus: list[GpuFact], image_size: int = 256) -> int:
    """Per-device batch size for the default VA-VAE preset, from the smallest GPU's memory.

    Anchored on the seed: batch 8 at 256 px fits one 16 GB T4 (with the DINOv2-L teacher, LPIPS and the
    discriminator); memory grows about linearly with batch and with pixel count.
    """
    if not gpus:
        at_256 = 2
    else:
        mem = min(g.memory_gb for g in gpus)
        at_256 = 4 if mem < 12 else 8 if mem < 24 else 16 if mem < 48 else 32
    scaled = at_256 * (256 / image_size) ** 2
    return 1 << (max(1, int(scaled)).bit_length() - 1)  # the power of two at or below


def detect_platform() -> str:
    """ "kaggle", "colab" or "local"."""
    if "KAGGLE_KERNEL_RUN_TYPE" in os.environ or KAGGLE_WORKING.is_dir():
        return "kaggle"
    if "COLAB_RELEASE_TAG" in os.environ or "COLAB_GPU" in os.environ:
        return "colab"
    return "local"


def can_reach(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host`` opens (Kaggle with Internet off fails at DNS)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _nvidia_smi_gpus() -> list[str]:
    """GPU names from ``nvidia-smi`` (what the driver sees, whether or not torch can use it)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    res = subprocess.run([exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    return [line.strip() for line in res.stdout.splitlines() if line.strip()] if res.returncode == 0 else []


def _tree_bytes(root: Path) -> int:
    """Bytes of the files under ``root``; links count as links (a dangling one must not crash step 1)."""
    return sum(os.lstat(os.path.join(d, n)).st_size for d, _, names in os.walk(root) for n in names)


def disk_facts(work_dir: Path, quota_root: Path | None = None, quota_gb: float | None = None) -> dict[str, Any]:
    """Free space for the work directory (GiB), capped by a quota on ``quota_root`` (Kaggle's 20 GB)."""
    probe = Path(work_dir).resolve()
    while not probe.exists():
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    facts: dict[str, Any] = {"path": str(work_dir), "free_gb": round(usage.free / GIB, 2)}
    if quota_root is not None and quota_gb is not None and probe.is_relative_to(quota_root):
        used = _tree_bytes(quota_root) / GIB
        facts.update(quota_gb=quota_gb, quota_used_gb=round(used, 2))
        facts["free_gb"] = round(min(usage.free / GIB, quota_gb - used), 2)
    return facts


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _ram_gb() -> float | None:
    if not hasattr(os, "sysconf"):
        return None
    return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1)


def _torch_facts() -> dict[str, Any]:
    import torch

    return {
        "version": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "arch_list": _arch_list(),
        "cuda_available": torch.cuda.is_available(),
    }


def collect_environment(work_dir: Path, kaggle_t4: bool = False, min_free_gb: float = MIN_FREE_DISK_GB) -> dict:
    """Everything step 1 reports, as the JSON-ready dict written to ``environment.json``.

    Args:
        work_dir: the work directory (its disk is measured).
        kaggle_t4: the user means to train on Kaggle's "GPU T4 x2" (two T4s, DDP).
        min_free_gb: free space below which the disk is an error.

    Returns:
        Keys: created, platform, python, os, packages, torch, gpus, nvidia_smi, cpu_count, ram_gb, disk,
        internet, kaggle_t4, precision {advice, reason}, batch_size_advice, warnings, errors.
    """
    warnings: list[str] = []
    errors: list[str] = []
    where = detect_platform()
    gpus = gpu_facts()
    smi = _nvidia_smi_gpus()
    if smi and not gpus:
        errors.append(
            f"nvidia-smi sees {len(smi)} GPU(s) ({', '.join(smi)}) but torch {_torch_version()} cannot use "
            "CUDA: the driver is older than this torch build needs; install a torch build for this driver "
            f"(e.g. CUDA 12.6: {PASCAL_TORCH_INSTALL})"
        )
    try:
        assert_gpus_usable(gpus)
    except AetuneError as e:
        errors.append(str(e))
    names = [g.name for g in gpus]
    if kaggle_t4 and (len(gpus) != 2 or not all("T4" in n for n in names)):
        errors.append(
            f"--kaggle_t4 expects two T4 GPUs but found {len(gpus)} ({', '.join(names) or 'none'}): choose the "
            'accelerator "GPU T4 x2" in the Kaggle notebook settings, or drop --kaggle_t4 to use one GPU'
        )
    elif len(gpus) > 1 and not kaggle_t4:
        warnings.append(f"{len(gpus)} GPUs found: pass --devices 0,1 (or --kaggle_t4) to step 4 to use them all")
    if len(set(names)) > 1:
        warnings.append(f"mixed GPUs ({', '.join(names)}): DDP runs at the pace of the slowest")
    if not gpus and where == "kaggle":
        warnings.append('no GPU: choose the accelerator "GPU T4 x2"; on CPU only the demo preset is practical')
    disk = disk_facts(work_dir, KAGGLE_WORKING, KAGGLE_QUOTA_GB) if where == "kaggle" else disk_facts(work_dir)
    if disk["free_gb"] < min_free_gb:
        errors.append(
            f"only {disk['free_gb']:.1f} GB free for {work_dir} (need {min_free_gb:g} GB for weights and "
            "checkpoints): delete old checkpoints or outputs, or pass --min_free_gb for a smaller run"
        )
    internet = {host: can_reach(host) for host in ("pypi.org", "huggingface.co")}
    if not internet["huggingface.co"]:
        warnings.append(
            "huggingface.co is unreachable: step 2 cannot download; attach the weights as a Kaggle dataset "
            "and run step 2 with --weights_dir"
        )
    precision, reason = advise_precision(gpus)
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": where,
        "python": platform.python_version(),
        "os": platform.platform(),
        "packages": {name: _version(name) for name in REPORTED_PACKAGES},
        "torch": _torch_facts(),
        "gpus": [dataclasses.asdict(g) for g in gpus],
        "nvidia_smi": smi,
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gb": _ram_gb(),
        "disk": disk,
        "internet": internet,
        "kaggle_t4": kaggle_t4,
        "precision": {"advice": precision, "reason": reason},
        "batch_size_advice": advise_batch_size(gpus, DataConfig().image_size),
        "warnings": warnings,
        "errors": errors,
    }


@dataclass
class RequirementStatus:
    """One line of requirements.txt against what is installed."""

    requirement: str  # as written, e.g. "timm>=0.9"
    name: str  # canonical distribution name
    installed: str | None  # installed version, None = missing
    satisfied: bool
    protected: bool  # torch / torchvision: reported, never installed


def check_requirements(path: Path) -> list[RequirementStatus]:
    """Parse ``path`` (one requirement per line, # comments) and compare with installed versions.

    Raises:
        AetuneError: the file is missing or a line is not a requirement.
    """
    if not Path(path).is_file():
        raise AetuneError(f"requirements file {path} not found (pass --requirements PATH)")
    out = []
    for num, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement as e:
            raise AetuneError(f"{path}:{num}: '{line}' is not a requirement ({e})") from e
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        have = _version(req.name)
        ok = have is not None and req.specifier.contains(have, prereleases=True)
        out.append(RequirementStatus(line, name, have, ok, name in PROTECTED))
    return out


def requirement_names(cfg: Config) -> list[str]:
    """The extras a config needs: its family's, and its task's (``requirements/restoration.txt``) unless the task is
    plain reconstruction."""
    return [cfg.model.family, *([cfg.model.task] if cfg.model.task != RECONSTRUCTION else [])]


def family_requirements(family: str, folder: Path) -> Path | None:
    """``<folder>/<family>.txt``, the extra packages of ``family``; None when requirements.txt covers it.

    Any ``<folder>/<name>.txt`` is accepted, so an extra that is not a family (``hf``: Hugging Face
    datasets) installs the same way. The names come from the files and the families' registered config
    sections (torch-free), so step 1 can answer before torch is installed.

    Raises:
        AetuneError: an unknown family, listing the valid ones.
    """
    extras = {p.stem: p for p in Path(folder).glob("*.txt")} if Path(folder).is_dir() else {}
    if family in extras:
        return extras[family]
    families = schema_families()
    if family in families:
        return None
    valid = sorted({*families, *extras})
    close = difflib.get_close_matches(family, valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise AetuneError(
        f"unknown family '{family}'{hint}: valid names (the families, and requirements/<name>.txt extras) "
        f"are {', '.join(valid)}"
    )


def _run_pip(args: list[str]) -> tuple[int, str]:
    """``python -m pip <args>``; (return code, stdout + stderr)."""
    res = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    return res.returncode, res.stdout + res.stderr


def install_requirements(statuses: list[RequirementStatus], wheels_dir: Path | None = None) -> list[str]:
    """pip-install the unsatisfied, unprotected requirements, pinning the installed torch/torchvision.

    Args:
        statuses: from :func:`check_requirements`.
        wheels_dir: install offline from this folder of wheels (``--no-index --find-links``).

    Returns:
        The requirement strings handed to pip ([] when nothing was missing).

    Raises:
        AetuneError: pip failed; "no internet" with the offline recipe when the failure is a network one.
    """
    todo = [s.requirement for s in statuses if not s.satisfied and not s.protected]
    if not todo:
        return []
    pins = [f"{s.name}=={s.installed}" for s in statuses if s.protected and s.installed]
    pins += [f"{n}=={v}" for n in PROTECTED if (v := _version(n)) and n not in {s.name for s in statuses}]
    source = ["--no-index", "--find-links", str(wheels_dir)] if wheels_dir else []
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "constraints.txt"  # pip may not swap torch to satisfy a dependency
        constraints.write_text("\n".join(pins) + "\n", encoding="utf-8")
        code, output = _run_pip(["install", "-c", str(constraints), *source, *todo])
    if code == 0:
        return todo
    if _NETWORK_ERROR.search(output) and not wheels_dir:
        raise AetuneError(
            "no internet: attach a Kaggle dataset with the wheels (pip download -r requirements.txt -d "
            "wheels, on a machine with internet) and run step 1 with --wheels_dir /kaggle/input/<dataset>, "
            f"or turn Internet on in the notebook settings (could not install {' '.join(todo)})"
        )
    tail = " | ".join(output.strip().splitlines()[-3:])
    raise AetuneError(f"pip could not install {' '.join(todo)}: {tail}")

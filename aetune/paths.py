"""Where things are on Kaggle and locally: the few fixed paths every layer may need."""

from pathlib import Path

KAGGLE_WORKING = Path("/kaggle/working")
"""The only folder a Kaggle session keeps (20 GB)."""
KAGGLE_INPUT = Path("/kaggle/input")
"""Where Kaggle mounts attached datasets, read-only."""
DEFAULT_WORK_DIR = Path("./aetune_work")
"""Work directory outside Kaggle."""

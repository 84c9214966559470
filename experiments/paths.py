"""Where the checkout's own files are: the repository root (git provenance, sweep config lookup) and the shipped
quickstart configs. Plain constants, so every verb can read them without importing another verb."""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
QUICKSTART_DIR = Path(__file__).resolve().parent / "configs" / "quickstart"

"""pagebench harness: drive several LLM servers with one workload and record what happened."""
from importlib import metadata

try:
    __version__ = metadata.version("pagebench")
except metadata.PackageNotFoundError:
    __version__ = "0.1.0+src"

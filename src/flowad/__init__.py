"""flowad: find anomalous jobs in workflow executions with language models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("flowad")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]

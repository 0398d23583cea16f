"""photoclust: turn a folder of photos into clusters a person can look at and trust.

From Python: `from pipeline import load_results, show_cluster` (see pipeline/api.py). They
are imported on first use, so `import pipeline` (and the command line) stays light.
"""

__version__ = "0.1.0"

_API = ("load_results", "show_cluster", "output_folder", "ClusterView")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")

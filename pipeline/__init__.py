"""photoclust: turn a folder of photos into clusters a person can look at and trust."""

__version__ = "0.1.0"

"""precise-baa: bone age assessment from hand radiographs."""

__version__ = "0.1.0"

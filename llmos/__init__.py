"""llmos: an operating system for LLM work. The code lives in the top-level folders
kernel/, drivers/, userland/, shell/ and benchmarks/, installed as llmos.kernel, llmos.drivers, ..."""

__version__ = "0.1.0"

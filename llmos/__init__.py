"""llmos: an operating system for LLM work. The code lives in the top-level folders
kernel/, drivers/, userland/, shell/ and benchmarks/, installed as llmos.kernel, llmos.drivers, ...

Importing llmos sets OMP_WAIT_POLICY=PASSIVE unless the user chose a policy. It must happen before
torch loads its OpenMP runtime, which reads the variable once: by default torch's OpenMP workers
spin for a while after each parallel region, and with as many threads as cores they take the
cores from the quantized kernels' own thread pool (drivers/quant_kernels.cpp), whose contention
guard then runs it alone. Measured on a 2-core Zen 3 EPYC: SmolLM2 batch-64 decode 150 -> 136
ms, Gemma 3 270M 511 -> 280 ms a step; the fp32 path stays within noise.
"""

import os as _os

__version__ = "0.1.0"

USER_OMP_WAIT_POLICY = _os.environ.get("OMP_WAIT_POLICY")      # None: the user set none
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def user_environ() -> dict[str, str]:
    """The environment as the user set it (OMP_WAIT_POLICY as it was before llmos set it), for
    other engines that benchmarks run beside llmos (llama.cpp reads it too, and is slower with
    passive waiting)."""
    env = dict(_os.environ)
    if USER_OMP_WAIT_POLICY is None:
        env.pop("OMP_WAIT_POLICY", None)
    else:
        env["OMP_WAIT_POLICY"] = USER_OMP_WAIT_POLICY
    return env

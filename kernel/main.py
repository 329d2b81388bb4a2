"""Boot the kernel (xv6: main.c): `llmos serve` in the foreground.
(About 300 lines: the boot sequence and its options, in the order they are used.)

Boot order, one log line per step:
    config → driver (the model) → KV pool → engine → models (the table: others load on first
    use, kernel/models.py) → server (bind, token, pid file) → loop

`llmos serve` runs in the foreground and logs to stderr. Starting it in the background
(`llmos serve --daemon`) and stopping it (`llmos stop`) are a userland program:
userland/bin/daemon.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import os
import signal
import sys
import time
from pathlib import Path

from . import abi
from .cred import CredError, load_authorized_keys, load_secret_key, new_kernel_keys

log = logging.getLogger("llmos.kernel")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="llmos serve", description="run the llmos kernel")
    ap.add_argument("--model", default="smollm2", help="catalog name or path to a .gguf (default: smollm2)")
    from llmos.drivers.device import MODEL_DTYPES
    ap.add_argument("--dtype", default="auto", choices=MODEL_DTYPES)
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    kv = ap.add_mutually_exclusive_group()
    kv.add_argument("--kv-fraction", type=float, help="share of free device memory for KV blocks")
    kv.add_argument("--kv-blocks", type=int, help="exact number of KV blocks")
    ap.add_argument("--block-size", type=int, help="tokens per KV block")
    ap.add_argument("--max-tokens-per-step", type=int, help="token budget of one engine step")
    ap.add_argument("--socket", help="ipc socket path (default: <runtime dir>/kernel.sock)")
    ap.add_argument("--tcp", metavar="HOST:PORT", help="also listen on tcp://HOST:PORT, CURVE-encrypted; "
                    "clients' public keys go in <curve dir>/authorized_keys ('KEY USER [admin]' lines)")
    ap.add_argument("--curve-dir", type=Path, help="the kernel's CURVE keys and authorized_keys "
                    "(default: $LLMOS_HOME/curve; kernel.key_secret is made on first use)")
    ap.add_argument("--group", help="serve the Unix users of this group too (a system-wide kernel): "
                    "the socket and its directory become group-accessible")
    ap.add_argument("--limits", type=Path, help="per-user/group limits, TOML (default: $LLMOS_HOME/limits.toml "
                    "if it exists); see kernel/limits.py")
    ap.add_argument("--admin-group", default="llmos-admin",
                    help="members may kill, renice and shut down for anyone (default llmos-admin)")
    ap.add_argument("--lease", type=float, default=3.0, metavar="S",
                    help="seconds a vanished client's processes outlive it (default 3)")
    ap.add_argument("--keep-alive", type=_duration, default=300.0, metavar="T",
                    help="unload a model other than the default after T idle (no processes): seconds, "
                         "or 30s / 5m / 1h (default 5m, as Ollama)")
    ap.add_argument("--models-memory", type=_size, metavar="BYTES",
                    help="memory for all resident models, weights + KV (e.g. 8G; default: the default "
                         "model's + 80%% of the memory available after boot); see kernel/models.py")
    ap.add_argument("--prefix-disk", type=_size, metavar="SIZE",
                    help="keep full KV blocks of prefixes on disk, at most SIZE (e.g. 2G), under "
                         "$LLMOS_HOME/prefix, so they are not prefilled again after a restart (off by default)")
    ap.add_argument("--log-level", default="info", choices=("debug", "info", "warning"))
    return ap


def _duration(text: str) -> float:
    """'300', '30s', '5m', '1h' -> seconds (> 0)."""
    scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1:], None)
    try:
        v = float(text[:-1] if scale else text) * (scale or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 300, 30s, 5m, 1h)") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"a keep-alive must be > 0, got {text!r}")
    return v


def _size(text: str) -> int:
    """'8G', '512M', '1000000' -> bytes (> 0)."""
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(text[-1:].upper(), None)
    try:
        v = int(float(text[:-1] if scale else text) * (scale or 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 8G, 512M)") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"a size must be > 0, got {text!r}")
    return v


def _prefix_disk(engine, path: Path, limit: int) -> None:
    """The persistent prefix-cache tier (kernel/prefixdisk.py) of the default model's KV pool."""
    from llmos.drivers.catalog import home
    from .checkpoint import fingerprint
    from llmos.drivers.quant import A8_ARITHMETIC
    from .prefixdisk import PrefixDisk
    st = engine.storage
    shape = tuple(st.swap_out([0])[0].shape)
    a8 = f"-{A8_ARITHMETIC}" if getattr(engine.model, "act8", False) else ""   # another arithmetic: other KV bits
    key = f"{fingerprint(str(path))}-{str(st.dtype).replace('torch.', '')}{a8}-bs{st.block_size}"
    engine.kv.disk = d = PrefixDisk(home() / "prefix", key, shape, st.dtype, limit)
    log.info("boot: prefix disk %s: %d blocks, %.1f of %.1f MiB", d.dir, len(d.files), d.used / 2**20, limit / 2**20)


def main(argv: list[str]) -> int:
    """argv[0] is 'serve'."""
    cmd, rest = (argv[0], argv[1:]) if argv else ("serve", [])
    if cmd != "serve":
        print(f"llmos: kernel.main cannot run {cmd!r}", file=sys.stderr)
        return 2
    args = _parser().parse_args(rest)
    if args.lease <= 0:
        _parser().error("--lease must be > 0")
    rt = abi.ensure_runtime_dir()
    running = _running_pid(rt)
    if running:
        print(f"llmos serve: a kernel is already running (pid {running}); stop it with: llmos stop",
              file=sys.stderr)
        return 1
    return serve(args, rt)


def _curve(args, endpoints: list[str]) -> dict | None:
    """The kernel's CURVE keypair and authorized keys when a tcp:// endpoint is asked for. A key
    file that cannot be trusted is logged and TCP stays closed; the local socket serves anyway."""
    if not any(ep.startswith("tcp://") for ep in endpoints):
        return None
    from llmos.drivers.catalog import home
    d = args.curve_dir or home() / "curve"
    try:
        secret = d / "kernel.key_secret"
        if not secret.exists():
            new_kernel_keys(d)
            log.info("boot: made the kernel's CURVE keys in %s", d)
        public, secret_key = load_secret_key(secret)
        keys_file = d / "authorized_keys"
        keys, admins = load_authorized_keys(keys_file) if keys_file.exists() else ({}, frozenset())
        if not keys:
            log.warning("boot: %s lists no client keys: no TCP client can connect", keys_file)
    except CredError as e:
        log.error("boot: TCP not opened: %s", e)
        return None
    return {"curve": (public, secret_key), "curve_keys": keys, "curve_admins": admins}


def _limits(args):
    """The limits table: the file's rules, or (a bad file is logged, never fatal) the defaults."""
    from llmos.drivers.catalog import home
    from .limits import Limits, LimitsError, load
    path = args.limits or home() / "limits.toml"
    if args.limits is None and not path.exists():
        return Limits()
    try:
        rules = load(path)
    except LimitsError as e:
        log.error("boot: limits not applied, using the defaults: %s", e)
        return Limits()
    log.info("boot: limits  %s", "; ".join(f"{s} {r}" for s, r in rules.items()))
    return Limits(rules)


def _share_with_group(sock: Path, group: str) -> None:
    """A system-wide kernel: the group's users may reach the socket (identity still from the OS)."""
    import grp
    gid = grp.getgrnam(group).gr_gid
    for path, mode in ((sock.parent, 0o750), (sock, 0o660)):
        os.chown(path, -1, gid)
        os.chmod(path, mode)
    log.info("boot: socket shared with group %s", group)


def _endpoints(args, rt: Path) -> list[str]:
    eps = [abi.ipc_endpoint(Path(args.socket) if args.socket else abi.socket_path(rt))]
    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        if not host or not (port.isdigit() or port == "*"):
            raise ValueError(f"--tcp wants HOST:PORT (PORT may be *), got {args.tcp!r}")
        eps.append(f"tcp://{host}:{port}")
    return eps


def serve(args, rt: Path) -> int:
    """Boot in this process and serve until `llmos stop`, SIGTERM or SIGINT."""
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s llmos[%(process)d] %(message)s", datefmt="%H:%M:%S")
    from llmos.drivers import catalog
    from llmos.drivers.gguf import ModelFileError
    from llmos.drivers.llama import LlamaModel
    from .engine import Engine
    from .param import KernelConfig
    from .cred import Roles
    from .server import Server
    from .syscalls import Kernel
    from .waitq import WaitQueues

    t0 = time.monotonic()
    try:
        changes = {k: v for k, v in (("kv_fraction", args.kv_fraction), ("num_blocks", args.kv_blocks),
                                     ("block_size", args.block_size),
                                     ("max_step_tokens", args.max_tokens_per_step)) if v is not None}
        config = KernelConfig().replace(**changes)
        endpoints = _endpoints(args, rt)
        log.info("boot: config  %s", " ".join(f"{k}={v}" for k, v in config.as_dict().items()))
        path = catalog.resolve(args.model, pull_missing=True)
        model = LlamaModel.load(str(path), dtype=args.dtype, device=args.device,
                                progress=sys.stderr.isatty())
        c = model.config
        from llmos.drivers.cpu import cpu_features, isa_summary
        log.info("boot: driver  %s (%s, %d layers, hidden %d, context %d) on %s/%s, %.1f s; cpu %s (%s), "
                 "weights %s, KV %s", path.name, c.arch, c.n_layers, c.hidden_size, c.context_length, model.device,
                 str(model.dtype)[6:], time.monotonic() - t0, cpu_features()["model"], isa_summary(),
                 getattr(model, "weight_format", lambda: str(model.dtype))(),
                 str(getattr(model, "kv_dtype", model.dtype))[6:])
        waits = WaitQueues()
        engine = Engine(model, config, on_wake=waits.wake, limits=_limits(args))
        if args.prefix_disk:
            _prefix_disk(engine, path, args.prefix_disk)
        gc.freeze()     # model and pool live for the boot: keep them out of full GC passes (p99)
        kv = engine.kv.stats()
        log.info("boot: KV pool %d blocks x %d tokens, %.1f MiB", kv["total"], kv["block_size"],
                 kv["total"] * kv["bytes_per_block"] / 2**20)
        log.info("boot: engine  max_context=%d max_running=%d step budget %d tokens",
                 engine.max_context, config.max_running, config.max_step_tokens)
    except (ValueError, ModelFileError, OSError) as e:
        log.error("boot failed: %s", e)
        return 1
    token = abi.write_token(rt)
    info = {"model": path.stem, "model_path": str(path), "device": str(model.device),
            "dtype": str(model.dtype).replace("torch.", ""), "config": config.as_dict(),
            "model_config": dataclasses.asdict(model.config), "max_context": engine.max_context,
            "endpoints": endpoints, "runtime_dir": str(rt)}
    kernel = Kernel(engine=engine, model=model, token=token, waits=waits, lease_s=args.lease, info=info)
    from .models import Models                  # other models, loaded on first use (kernel/models.py)
    models = Models(kernel, load_model=lambda p: LlamaModel.load(p, dtype=args.dtype, device=args.device),
                    budget_bytes=args.models_memory, keep_alive_s=args.keep_alive)
    log.info("boot: models  %s resident (default); budget %.1f MiB, keep-alive %g s",
             models.default_name(), models.budget / 2**20, args.keep_alive)
    from .hibernate import Checkpoints          # sessions outlive the kernel: restore the saved ones
    kernel.checkpoints = Checkpoints(engine, str(path), sessions=True)
    restored = kernel.checkpoints.boot()
    log.info("sessions: %d restored from %s%s", len(restored), kernel.checkpoints.dir,
             f" (pids {', '.join(map(str, restored))})" if restored else "")
    curve = _curve(args, endpoints)
    if curve is None:
        endpoints = [ep for ep in endpoints if not ep.startswith("tcp://")]
    server = Server(kernel, endpoints, roles=Roles(admin_group=args.admin_group),
                    **(curve or {}))
    try:
        server.bind()
        if args.group:
            _share_with_group(Path(endpoints[0][6:]), args.group)
        if curve is not None:   # local clients must speak CURVE too: they find the public key here
            (rt / "kernel.key").write_bytes(curve["curve"][0] + b"\n")
    except Exception as e:
        log.error("boot failed: cannot bind %s: %s", ", ".join(endpoints), e)
        abi.token_path(rt).unlink(missing_ok=True)
        return 1
    info["endpoints"] = endpoints = server.endpoints
    abi.pid_path(rt).write_text(f"{os.getpid()}\n")
    log.info("boot: server  %s (token %s, lease %g s)", ", ".join(endpoints), abi.token_path(rt), args.lease)
    try:
        import uvloop
        log.info("boot: loop    uvloop; ready in %.1f s", time.monotonic() - t0)
        uvloop.run(_run(server))
    finally:
        if engine.kv.disk is not None:
            log.info("prefix disk: %d blocks written at shutdown", engine.kv.persist())
        for p in (abi.pid_path(rt), abi.token_path(rt), Path(endpoints[0][6:])):
            p.unlink(missing_ok=True)
        log.info("stopped")
    return 0


async def _run(server) -> None:
    import asyncio
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.shutdown)
    await server.serve()


def _running_pid(rt: Path) -> int | None:
    """The pid in the pid file if that process is alive (a stale pid file is removed)."""
    try:
        pid = int(abi.pid_path(rt).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if not _alive(pid):
        abi.pid_path(rt).unlink(missing_ok=True)
        return None
    return pid


def _alive(pid: int) -> bool:
    import psutil
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]] if len(sys.argv) < 2 or sys.argv[1] != "serve"
                  else sys.argv[1:]))

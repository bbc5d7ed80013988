from __future__ import annotations

import json
import os
import stat
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from cookiebaker import export
from cookiebaker.errors import ModelError
from cookiebaker.export import LOGIT_TOLERANCE, ExportConfig
from cookiebaker.export.parity import _compare, check_parity, logit_error
from cookiebaker.export.push import PushConfig, PushError
from cookiebaker.modelfile import CHATML, GEMMA, render_modelfile
from cookiebaker.tokenizer_fix import AmbiguousMerges, rewrite_merges


@pytest.fixture(scope="module")
def merged(tiny_merged: Path) -> Path:
    return tiny_merged


def _bpe(merges: list) -> dict:
    return {"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": merges}}


def test_merges_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(_bpe([["a", "b"], ["ab", "c"]])))
    assert rewrite_merges(path) == 2
    assert json.loads(path.read_text())["model"]["merges"] == ["a b", "ab c"]
    assert rewrite_merges(path) == 0  # idempotent
    path.write_text(json.dumps(_bpe([["a", "b"], ["x y", "z"]])))
    before = path.read_text()
    with pytest.raises(AmbiguousMerges, match="space"):
        rewrite_merges(path)
    assert path.read_text() == before


def test_modelfiles() -> None:
    gemma = render_modelfile("./m.f16.gguf", GEMMA, temperature=0.7, top_p=0.7, stops=list(GEMMA.stops), system=None)
    assert gemma.startswith("FROM ./m.f16.gguf\n")
    assert "<start_of_turn>user" in gemma and "<start_of_turn>model" in gemma and "$system" in gemma
    assert 'PARAMETER temperature 0.7\nPARAMETER top_p 0.7\nPARAMETER stop "<end_of_turn>"\nPARAMETER stop "<eos>"' in gemma
    chatml = render_modelfile("/m", CHATML, temperature=0.5, top_p=0.9, stops=["<|im_end|>"], system="You are Bob.")
    assert 'SYSTEM """You are Bob."""' in chatml and 'PARAMETER stop "<|im_end|>"' in chatml
    assert "<|im_start|>assistant" in chatml


@pytest.mark.parametrize("kind", ["f16", "bf16", "q8_0"])
def test_export_matches_transformers(merged: Path, tmp_path: Path, kind: str) -> None:
    report = export.run(ExportConfig(model=str(merged), output_dir=str(tmp_path), name="cb-test", quantize=kind,
                                     report=str(tmp_path / "report.json")))
    gguf = tmp_path / f"cb-test.{kind}.gguf"
    assert gguf.is_file() and report["gguf_bytes"] == gguf.stat().st_size
    parity = report["parity"]
    assert parity["tokenizer_matches"] and parity["end_of_turn_stops_generation"]
    # Every type agrees within its own rounding (a greedy flip there is a near-tie), f16 by far the closest.
    assert parity["agreement"] == 1.0 and parity["logit_error"] <= LOGIT_TOLERANCE[kind], parity
    if kind == "f16":
        assert parity["logit_error"] < 0.01 and all(not item["tie_at"] for item in parity["prompts"]), parity
    modelfile = (tmp_path / "Modelfile").read_text()
    assert modelfile.startswith(f"FROM ./cb-test.{kind}.gguf") and 'PARAMETER stop "<end_of_turn>"' in modelfile
    assert f"FROM {merged.resolve()}" in (tmp_path / "Modelfile.safetensors").read_text()
    assert json.loads((tmp_path / "export.json").read_text())["quantize"] == kind
    assert json.loads((tmp_path / "report.json").read_text())["gguf"] == str(gguf)
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), verbose=False)
    assert llm.n_vocab() > 500


def test_logit_error_is_scale_free_and_looks_at_the_likely_tokens() -> None:
    rng = np.random.default_rng(0)
    expected = rng.normal(size=1000)
    actual = expected + 0.01 * rng.normal(size=1000)
    assert logit_error(expected * 7, actual * 7) == pytest.approx(logit_error(expected, actual))
    tail = actual.copy()
    tail[np.argsort(expected)[:100]] += 50  # the unlikely tokens are far off: no part of any choice
    assert logit_error(expected, tail) == pytest.approx(logit_error(expected, actual))
    head = actual.copy()
    head[np.argmax(expected)] += 5 * expected.std()
    assert logit_error(expected, head) == pytest.approx(5, rel=0.01)
    # A padded vocabulary (the GGUF longer) compares over the shared tokens.
    assert logit_error(expected, np.append(actual, [0.0] * 8)) == pytest.approx(logit_error(expected, actual))


def test_a_greedy_flip_is_a_tie_only_within_the_tolerance() -> None:
    rows = [np.array([0.0, -1.0, -1.001, -5.0]) for _ in range(3)]

    def llama_row(error: float):  # the engine's row after any tokens: the two near-equal tokens swapped by error
        return lambda ids: rows[0] + np.array([0.0, -error, error, 0.0])

    std = rows[0].std()
    flip = dict(expected=[0, 1, 0], actual=[0, 2, 0], rows=rows, ids=[5])
    tie = _compare(llama_row=llama_row(0.01), tolerance=0.1, **flip)
    assert tie["agreed_tokens"] == 1 and tie["tie_at"] == 1 and tie["agrees"]
    assert tie["logit_error_at_difference"] == pytest.approx(0.01 / std, rel=1e-4)
    apart = _compare(llama_row=llama_row(0.01), tolerance=0.001, **flip)
    assert apart["tie_at"] is None and not apart["agrees"]
    same = _compare(expected=[0, 1], actual=[0, 1], rows=rows, llama_row=llama_row(0.0), ids=[5], tolerance=0.0)
    assert same["agrees"] and same["logit_error"] == 0 and same["logit_error_at_difference"] is None
    stopped_early = _compare(expected=[0, 1], actual=[0], rows=rows, llama_row=llama_row(0.0), ids=[5], tolerance=1)
    assert not stopped_early["agrees"] and stopped_early["agreed_tokens"] == 1


def test_parity_tells_another_model_from_rounding(merged: Path, tiny_gemma: Path, tmp_path: Path) -> None:
    """The oracle's other side: the untrained base, asked to match the trained model's GGUF, is far outside
    even the loosest type's tolerance."""
    export.run(ExportConfig(model=str(merged), output_dir=str(tmp_path), name="cb", check=False))
    parity = check_parity(tmp_path / "cb.f16.gguf", tiny_gemma, ["Hi! How are you today?"], 8, "<end_of_turn>",
                          LOGIT_TOLERANCE["f16"])
    assert parity["logit_error"] > max(LOGIT_TOLERANCE.values()) and parity["agreement"] == 0, parity


def test_k_quant_reports_agreement(merged: Path, tmp_path: Path) -> None:
    report = export.run(ExportConfig(model=str(merged), output_dir=str(tmp_path), name="k", quantize="q4_K_M"))
    assert (tmp_path / "k.q4_K_M.gguf").is_file() and not list(tmp_path.glob(".k.f16*"))
    prompts = report["parity"]["prompts"]
    assert len(prompts) == 3 and all(item["tokenizer_matches"] for item in prompts)
    assert report["parity"]["agreement"] == sum(item["agrees"] for item in prompts) / len(prompts)
    assert all(item["agreed_tokens"] <= item["compared_tokens"] for item in prompts)


def test_gemma_without_tokenizer_model(merged: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "merged"
    shutil.copytree(merged, broken)
    (broken / "tokenizer.model").unlink()
    with pytest.raises(ModelError, match="tokenizer.model"):
        export.run(ExportConfig(model=str(broken), output_dir=str(tmp_path / "out")))


def _fake_ollama(folder: Path, record: Path, fail: bool = False) -> None:
    script = folder / "ollama"
    script.write_text(f"#!/bin/sh\necho \"$PWD $@\" >> {record}\n" + ("echo 'Error: unauthorized' >&2\nexit 1\n" if fail else ""))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_push_with_the_ollama_cli(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "Modelfile").write_text("FROM ./m.gguf\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_ollama(bin_dir, tmp_path / "calls.txt")
    env_path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    monkeypatch.setenv("PATH", env_path)
    result = run_cli("push", "--output-dir", str(tmp_path / "export"), "--name", "me/cookiebaker-sfw")
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert calls == [f"{tmp_path / 'export'} create me/cookiebaker-sfw -f Modelfile",
                     f"{tmp_path / 'export'} push me/cookiebaker-sfw"]
    (tmp_path / "calls.txt").unlink()
    assert run_cli("push", "--output-dir", str(tmp_path / "export"), "--name", "x", "--no-push").returncode == 0
    assert (tmp_path / "calls.txt").read_text().splitlines() == [f"{tmp_path / 'export'} create x -f Modelfile"]
    _fake_ollama(bin_dir, tmp_path / "calls.txt", fail=True)
    result = run_cli("push", "--output-dir", str(tmp_path / "export"), "--name", "x")
    assert result.returncode == 1 and "unauthorized" in result.stderr and "Traceback" not in result.stderr


def test_push_without_ollama(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "Modelfile").write_text("FROM ./m.gguf\n")
    monkeypatch.setenv("PATH", str(Path(os.__file__).parent))  # no ollama anywhere
    result = run_cli("push", "--output-dir", str(tmp_path), "--name", "x", "--host", "http://127.0.0.1:9")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "install Ollama" in lines[0] and "ollama serve" in lines[0]


def test_push_through_the_rest_api(merged: Path, tmp_path: Path, monkeypatch) -> None:
    export.run(ExportConfig(model=str(merged), output_dir=str(tmp_path), name="api", check=False))
    seen: list[tuple[str, str, bytes]] = []

    class FakeOllama(BaseHTTPRequestHandler):
        def _reply(self, code: int, body: bytes = b"{}") -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802
            seen.append(("GET", self.path, b""))
            self._reply(200, b'{"version": "0.9.0"}')

        def do_HEAD(self):  # noqa: N802
            seen.append(("HEAD", self.path, b""))
            self.send_response(404)
            self.end_headers()

        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append(("POST", self.path, body if not self.path.startswith("/api/blobs") else b"<gguf>"))
            self._reply(201 if self.path.startswith("/api/blobs") else 200)

        def log_message(self, *args) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), FakeOllama)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr("shutil.which", lambda name: None)
    from cookiebaker.export import push

    try:
        steps = push.run(PushConfig(output_dir=str(tmp_path), name="me/api", host=f"127.0.0.1:{server.server_port}"))
    finally:
        server.shutdown()
    assert steps == ["upload api.f16.gguf", "create me/api", "push me/api"]
    paths = [(method, path.split("sha256:")[0]) for method, path, _ in seen]
    assert paths == [("GET", "/api/version"), ("HEAD", "/api/blobs/"), ("POST", "/api/blobs/"), ("POST", "/api/create"),
                     ("POST", "/api/push")]
    create = json.loads(seen[3][2])
    assert create["model"] == "me/api" and list(create["files"]) == ["api.f16.gguf"]
    assert create["parameters"] == {"temperature": 0.7, "top_p": 0.7, "stop": ["<end_of_turn>", "<eos>"]}
    assert "<start_of_turn>" in create["template"]
    with pytest.raises(PushError, match="Modelfile is missing"):
        push.run(PushConfig(output_dir=str(tmp_path / "nothing"), name="x"))


def test_export_never_changes_its_input(merged: Path, tmp_path: Path) -> None:
    """A folder written by plain transformers 5 lacks added_tokens_decoder: export fixes a staged copy, and the
    GGUF still tokenizes the chat markup as control tokens."""
    import hashlib
    import shutil

    source = tmp_path / "merged"
    shutil.copytree(merged, source)
    config_path = source / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    tokenizer_config.pop("added_tokens_decoder", None)
    config_path.write_text(json.dumps(tokenizer_config))

    def digests() -> dict:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(source.iterdir())}

    before = digests()
    report = export.run(ExportConfig(model=str(source), output_dir=str(tmp_path / "out"), name="m", quantize="f16"))
    assert digests() == before
    assert report["tokenizer_fix"]["added_tokens_decoder"] > 0
    assert set(report) == set(export.ExportReport.__annotations__)
    assert report["parity"]["tokenizer_matches"] and report["parity"]["agreement"] == 1.0
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no staging left behind

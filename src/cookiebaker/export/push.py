"""``cookiebaker push``: create the exported model in Ollama (CLI, or the REST API at OLLAMA_HOST) and push it."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
from pathlib import Path

from cookiebaker.config import StageConfig
from cookiebaker.errors import CookiebakerError
from cookiebaker.modelfile import parse_modelfile

log = logging.getLogger(__name__)


class PushError(CookiebakerError):
    """Ollama is missing, unreachable, or refused the model."""


class PushConfig(StageConfig):
    output_dir: str = "models/export"
    """The export folder (Modelfile and GGUF)."""
    name: str = "cookiebaker"
    """Ollama model name, e.g. USER/cookiebaker-sfw (a namespace is needed to push to ollama.com)."""
    push: bool = True
    """Push after creating; False creates the model locally only."""
    host: str | None = None
    """Ollama server for the REST API when the ollama CLI is not installed (default: OLLAMA_HOST or
    http://127.0.0.1:11434)."""


def _host(config: PushConfig) -> str:
    host = config.host or os.environ.get("OLLAMA_HOST") or "http://127.0.0.1:11434"
    return host if host.startswith(("http://", "https://")) else f"http://{host}"


def _modelfile(output: Path) -> Path:
    modelfile = output / "Modelfile"
    if not modelfile.is_file():
        raise PushError(f"{modelfile} is missing: run `cookiebaker export` first")
    return modelfile


def _with_cli(ollama: str, config: PushConfig, output: Path) -> list[str]:
    steps = [[ollama, "create", config.name, "-f", "Modelfile"]]
    if config.push:
        steps.append([ollama, "push", config.name])
    for step in steps:
        result = subprocess.run(step, cwd=output, capture_output=True, text=True)
        if result.returncode != 0:
            message = (result.stderr or result.stdout).strip().splitlines()
            raise PushError(f"`{' '.join(step[1:])}` failed: {message[-1] if message else 'no output'}")
    return [" ".join(step[1:]) for step in steps]


def _with_api(config: PushConfig, output: Path) -> list[str]:
    import requests

    host = _host(config)
    try:
        requests.get(f"{host}/api/version", timeout=5).raise_for_status()
    except requests.RequestException:
        raise PushError(f"the ollama CLI is not installed and no Ollama server answers at {host}: install Ollama "
                        "(https://ollama.com/download) or start `ollama serve` (or set OLLAMA_HOST)") from None
    spec = parse_modelfile(_modelfile(output).read_text())
    gguf = (output / spec["from"]).resolve()
    digest = hashlib.sha256()
    with gguf.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    blob = f"sha256:{digest.hexdigest()}"
    done = []
    try:
        if requests.head(f"{host}/api/blobs/{blob}", timeout=30).status_code != 200:
            with gguf.open("rb") as file:
                requests.post(f"{host}/api/blobs/{blob}", data=file, timeout=3600).raise_for_status()
        done.append(f"upload {gguf.name}")
        body = {"model": config.name, "files": {gguf.name: blob}, "parameters": spec["parameters"], "stream": False}
        for key in ("template", "system"):
            if key in spec:
                body[key] = spec[key]
        requests.post(f"{host}/api/create", json=body, timeout=3600).raise_for_status()
        done.append(f"create {config.name}")
        if config.push:
            requests.post(f"{host}/api/push", json={"model": config.name, "stream": False}, timeout=3600
                          ).raise_for_status()
            done.append(f"push {config.name}")
    except requests.RequestException as exc:
        raise PushError(f"Ollama at {host} refused: {exc}") from None
    return done


def run(config: PushConfig) -> list[str]:
    output = Path(config.output_dir)
    _modelfile(output)
    ollama = shutil.which("ollama")
    steps = _with_cli(ollama, config, output) if ollama else _with_api(config, output)
    log.info("push: %s", "; ".join(steps))
    return steps

"""Stage ``serve``: the SFW and NSFW responders behind one HTTP service."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from cookiebaker.config import StageConfig
from cookiebaker.errors import ConfigError

__all__ = ["ServeConfig", "build_app", "run"]

log = logging.getLogger(__name__)


class ServeConfig(StageConfig):
    sfw_model: str | None = None
    """SFW responder: a .gguf, an export folder, a merged model folder, ollama:NAME, or an engine with OpenAI's
    chat API, openai:http://HOST:PORT/v1#MODEL (vLLM, SGLang, llama.cpp's server; key from
    COOKIEBAKER_ENGINE_API_KEY)."""
    nsfw_model: str | None = None
    """NSFW responder, the same kinds of reference."""
    sfw_modelfile: str | None = None
    """A Modelfile whose SYSTEM prompt, temperature, top_p and stops the SFW responder uses instead of its own:
    for an openai: engine, the one ``export --format lora`` wrote beside the adapter (the engine knows none)."""
    nsfw_modelfile: str | None = None
    """The same for the NSFW responder."""
    host: str = "127.0.0.1"
    """Address to bind; any non-loopback address needs COOKIEBAKER_API_KEY."""
    port: int = Field(8000, ge=0, le=65535)
    """TCP port (0: any free port)."""
    history_db: str = "serve/history.sqlite3"
    """SQLite file holding chat history (used unless database_url is set)."""
    database_url: str | None = None
    """SQLAlchemy URL of a PostgreSQL database for history, e.g. postgresql+psycopg://user:pw@host/db
    (default: the COOKIEBAKER_DATABASE_URL environment variable, so passwords stay out of config files)."""
    history_turns: int = Field(10, ge=0)
    """Turns of the chat's history sent as context with each webhook prompt."""
    max_stored_turns: int = Field(200, ge=2)
    """Turns kept per client and chat; older ones are deleted."""
    max_body_bytes: int = Field(1_000_000, ge=1024)
    """Larger request bodies get 413."""
    timeout_seconds: float = Field(120, gt=0)
    """A generation that takes longer gets 504."""
    header_timeout_seconds: float = Field(10, gt=0)
    """A request whose headers take longer to arrive gets 408 and its connection closes (slowloris)."""
    body_timeout_seconds: float = Field(30, gt=0)
    """A request whose body takes longer to arrive gets 408."""
    queue_size: int = Field(8, ge=1)
    """Requests per model waiting or generating at once; more get 503."""
    max_tokens: int = Field(256, ge=1)
    """Longest reply in tokens, unless a request asks for another."""
    max_tokens_limit: int = Field(4096, ge=1)
    """The most tokens a request may ask for (``max_tokens``, ``num_predict``); more is capped to this."""
    context_tokens: int = Field(4096, ge=256)
    """Context window a GGUF is loaded with, prompt and reply together. Longer prompts and histories are cut to
    fit it (the oldest turns first, keeping the newest), counted in /metrics as cookiebaker_context_cut."""
    turn_tokens: int = Field(200, ge=16)
    """Longest an earlier turn of a chat is sent as, in tokens (its end kept), so that one huge message cannot
    crowd the chat out of the context (after one of 1,000 tokens the demo's model answered in fragments; cut to
    218 it answered normally). Counted in cookiebaker_context_cut{part="text"}."""
    speakers: Literal["names", "none"] = "names"
    """Whether the model is shown who speaks: ``names`` renders a webhook's sender_name (and an OpenAI message's
    name) as ``Name: text``, the way ``pairs`` renders speakers for training (keep the two the same: a model trained
    with ``pairs.speakers: none`` is served with ``none``); ``none`` never shows a name."""
    temperature: float | None = Field(None, ge=0)
    """Override the Modelfile's temperature for every request."""
    top_p: float | None = Field(None, gt=0, le=1)
    """Override the Modelfile's top_p for every request."""

    @model_validator(mode="after")
    def _check(self) -> ServeConfig:
        problems = [] if self.sfw_model or self.nsfw_model else ["give at least one of 'sfw_model' and 'nsfw_model'"]
        for label in ("sfw", "nsfw"):
            modelfile = getattr(self, f"{label}_modelfile")
            if modelfile and not getattr(self, f"{label}_model"):
                problems.append(f"'{label}_modelfile' without '{label}_model'")
            elif modelfile and not Path(modelfile).is_file():
                problems.append(f"'{label}_modelfile': {modelfile} is not a file")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
        except OSError:
            return False


def build_app(config: ServeConfig, backends: dict | None = None):  # noqa: ANN201
    """The FastAPI app for a config; ``backends`` (name → Backend) replaces loading the models (tests)."""
    from cookiebaker.backends import Sampling, open_backend, sampling_from_modelfile
    from cookiebaker.serve.app import NSFW, SFW, create_app
    from cookiebaker.serve.history import HistoryStore

    if backends is None:
        references = {SFW: config.sfw_model, NSFW: config.nsfw_model}
        backends, opened = {}, {}
        for name, reference in references.items():
            if reference:
                if reference not in opened:  # the same model for both routes is loaded once
                    opened[reference] = open_backend(reference, config.context_tokens)
                backends[name] = opened[reference]
                log.info("%s → %s", name, backends[name].description)
    modelfiles = {SFW: config.sfw_modelfile, NSFW: config.nsfw_modelfile}
    samplings = {name: sampling_from_modelfile(Path(modelfiles[name])) if modelfiles.get(name)
                 else getattr(backend, "default", None) or Sampling() for name, backend in backends.items()}
    samplings = {name: sampling.merged(max_tokens=config.max_tokens, temperature=config.temperature,
                                       top_p=config.top_p) for name, sampling in samplings.items()}
    database = config.database_url or os.environ.get("COOKIEBAKER_DATABASE_URL") or config.history_db
    store = HistoryStore(database, config.max_stored_turns)
    return create_app(backends=backends, samplings=samplings, store=store, history_turns=config.history_turns,
                      api_key=os.environ.get("COOKIEBAKER_API_KEY") or None, max_body_bytes=config.max_body_bytes,
                      queue_size=config.queue_size, timeout=config.timeout_seconds,
                      max_tokens_limit=config.max_tokens_limit, turn_tokens=config.turn_tokens,
                      speakers=config.speakers, body_timeout=config.body_timeout_seconds)


def run(config: ServeConfig) -> None:
    """Load the models, bind the port, say where it serves (only then), serve until Ctrl-C."""
    if not is_loopback(config.host) and not os.environ.get("COOKIEBAKER_API_KEY"):
        raise ConfigError(f"refusing to serve on {config.host} without an API key: set COOKIEBAKER_API_KEY "
                          "(clients then send Authorization: Bearer <key>) or bind 127.0.0.1")
    from cookiebaker.serve.server import Server, server_config

    app = build_app(config)
    server = Server(server_config(app, config.host, config.port, config.header_timeout_seconds,
                                  log_level="warning", access_log=False))
    server.announce = lambda: print(f"serving on http://{config.host}:{config.port} (Ctrl-C to stop)", flush=True)
    server.run()

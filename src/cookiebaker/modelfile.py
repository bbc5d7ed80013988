"""Ollama Modelfiles: the chat template of the model family, sampling parameters and stop sequences."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from cookiebaker.errors import ModelError

# System text goes into the first user turn, as in training (Gemma has no system role).
GEMMA_TEMPLATE = """{{- $system := "" }}
{{- range .Messages }}{{- if eq .Role "system" }}{{ $system = printf "%s%s\\n\\n" $system .Content }}{{- end }}{{- end }}
{{- if and .System (eq $system "") }}{{ $system = printf "%s\\n\\n" .System }}{{- end }}
{{- $first := true }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<start_of_turn>user
{{ if $first }}{{ $system }}{{ $first = false }}{{ end }}{{ .Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- end }}
{{- end }}"""

CHATML_TEMPLATE = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if ne .Role "system" }}<|im_start|>{{ .Role }}
{{ .Content }}{{ if or (ne .Role "assistant") (not $last) }}<|im_end|>
{{ end }}
{{- if and $last (ne .Role "assistant") }}<|im_start|>assistant
{{ end }}
{{- end }}
{{- end }}"""


@dataclass(frozen=True)
class Family:
    name: str
    template: str
    stops: tuple[str, ...]
    end_of_turn: str


GEMMA = Family("gemma", GEMMA_TEMPLATE, ("<end_of_turn>", "<eos>"), "<end_of_turn>")
CHATML = Family("chatml", CHATML_TEMPLATE, ("<|im_end|>", "<|im_start|>"), "<|im_end|>")


def family_of(chat_template: str | None) -> Family:
    if not chat_template:
        raise ModelError("the model has no chat template: cannot write an Ollama TEMPLATE for it")
    if "<start_of_turn>" in chat_template:
        return GEMMA
    if "<|im_start|>" in chat_template:
        return CHATML
    raise ModelError("unsupported chat template family (cookiebaker writes Modelfiles for Gemma and ChatML models)")


def default_system_prompt(tokenizer) -> str | None:  # noqa: ANN001
    """The system text a template adds on its own (SmolLM2 adds one when a chat has none)."""
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "\u2063"}], tokenize=False)
    start = "<|im_start|>system\n"
    if rendered.startswith(start):
        return rendered[len(start):rendered.index("<|im_end|>")]
    return None


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_modelfile(source: str, family: Family, *, temperature: float, top_p: float, stops: list[str],
                     system: str | None, adapter: str | None = None) -> str:
    lines = [f"FROM {source}"]
    if adapter:
        lines.append(f"ADAPTER {adapter}")
    lines.append(f'TEMPLATE """{family.template}"""')
    if system:
        lines.append(f'SYSTEM """{system}"""')
    lines += [f"PARAMETER temperature {temperature:g}", f"PARAMETER top_p {top_p:g}"]
    lines += [f"PARAMETER stop {_quoted(stop)}" for stop in stops]
    return "\n".join(lines) + "\n"


def parse_modelfile(text: str) -> dict:
    """FROM, TEMPLATE, SYSTEM and PARAMETERs (stops as a list) of a Modelfile written by render_modelfile."""
    found = re.search(r"^FROM (.+)$", text, re.M)
    parsed: dict = {"from": found.group(1).strip() if found else None, "parameters": {}}
    for key in ("TEMPLATE", "SYSTEM"):
        block = re.search(rf'^{key} """(.*?)"""', text, re.M | re.S)
        if block:
            parsed[key.lower()] = block.group(1)
    for name, value in re.findall(r"^PARAMETER (\w+) (.+)$", text, re.M):
        value = json.loads(value) if value.startswith('"') else float(value)
        if name == "stop":
            parsed["parameters"].setdefault("stop", []).append(value)
        else:
            parsed["parameters"][name] = value
    return parsed

"""The request bodies the service accepts, declared once: the client webhook, Ollama's /api/chat and OpenAI's
/v1/chat/completions. Strict types (``"10"`` is not a number, ``true`` is not an integer), finite numbers, and
fields a client may send that the service does not use are ignored. A body that does not fit gets a 422 whose
one-line message names every bad field."""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

#: History rows are keyed by client and chat, each at most this long (the database column's size).
KEY_CHARACTERS = 200

#: What each field must be, for the 422's message.
MUST_BE = {
    "prompt": "a non-empty string",
    "chat_id": f"a string or a whole number, 1 to {KEY_CHARACTERS} characters",
    "client_name": f"a non-empty string of at most {KEY_CHARACTERS} characters, no control characters (omit it: "
                   "the API key's own history)",
    "sender_name": f"a string of at most {KEY_CHARACTERS} characters, no control characters",
    "sender_id": f"a string or a whole number, 1 to {KEY_CHARACTERS} characters",
    "name": f"a string of at most {KEY_CHARACTERS} characters",
    "sfw": "true or false",
    "model": "a string (cookiebaker-sfw or cookiebaker-nsfw)",
    "messages": "a non-empty list of {role, content}",
    "role": "system, user or assistant",
    "content": "a string (or a list of text parts)",
    "text": "a string",
    "type": "'text'",
    "stream": "true or false",
    "temperature": "a number in [0, 100]",
    "top_p": "a number in (0, 1]",
    "max_tokens": "a whole number of at least 1",
    "max_completion_tokens": "a whole number of at least 1",
    "num_predict": "a whole number of at least 1 (or -1 or -2: as many as the service allows)",
    "seed": "a whole number",
    "stop": "a string or a list of strings",
    "options": "an object",
    "frequency_penalty": "a number in [-2, 2]",
    "presence_penalty": "a number in [-2, 2]",
    "n": "a whole number of at least 1",
    "logprobs": "true or false",
    "top_logprobs": "a whole number",
    "stream_options": "an object ({include_usage})",
    "include_usage": "true or false",
    "response_format": "an object ({type})",
    "tools": "a list",
    "tool_choice": "a string or an object",
    "functions": "a list",
    "function_call": "a string or an object",
    "logit_bias": "an object",
    "modalities": "a list of strings",
    "audio": "an object",
    "prediction": "an object",
    "format": "a string or an object",
}


class Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False, frozen=True)


T = TypeVar("T", bound=Body)
Temperature = Annotated[float, Field(ge=0, le=100)]
TopP = Annotated[float, Field(gt=0, le=1)]
Count = Annotated[int, Field(ge=1)]
Stop = str | list[str]
Penalty = Annotated[float, Field(ge=-2, le=2)]


class TextPart(Body):
    """One part of an OpenAI message's content given as a list; only text parts are understood."""

    type: Literal["text"]
    text: str


#: No control characters: a client or speaker name is one line of text (and the history's own keys for clients
#: that give no name begin with one, so no client can name itself into another's history).
Printable = StringConstraints(max_length=KEY_CHARACTERS, pattern=r"^[^\x00-\x1f\x7f-\x9f]*$")
Name = Annotated[str, Printable]


class ChatMessage(Body):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]
    name: Name | None = None
    """OpenAI's participant name: the speaker of a user turn (``Name: text``, as the webhook's sender_name)."""

    def as_dict(self) -> dict[str, str]:
        text = self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)
        return {"role": self.role, "content": text, **({"speaker": self.name} if self.name else {})}


Messages = Annotated[list[ChatMessage], Field(min_length=1)]


class WebhookRequest(Body):
    """POST /webhook/response."""

    prompt: Annotated[str, StringConstraints(min_length=1)]
    chat_id: Annotated[str, StringConstraints(min_length=1)] | int
    sfw: bool = True
    client_name: Annotated[str, Printable, StringConstraints(min_length=1)] | None = None
    """The client's own history (with ``chat_id``); omitted or null: the history of the API key it authenticated
    with (without a key: the anonymous one), never another named client's. ``""`` is refused."""
    sender_name: Name | None = None
    """Who wrote the prompt: the model reads it as ``Name: text`` (serve.speakers: names), as it was trained."""
    sender_id: Annotated[str, StringConstraints(min_length=1, max_length=KEY_CHARACTERS)] | int | None = None
    """The client's id of that person, stored with the turn (never shown to the model)."""

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("blank")
        return value

    @field_validator("chat_id")
    @classmethod
    def _short(cls, value: str | int) -> str | int:  # a string or the digits of a number
        if len(str(value)) > KEY_CHARACTERS:
            raise ValueError("too long")
        return value

    @property
    def chat(self) -> str:
        return str(self.chat_id)

    def client(self, key: str | None) -> str:
        """Whose history this is: the client's name, else the identity of the key it presented."""
        if self.client_name is not None:
            return self.client_name
        return anonymous_client(key)


class TurnRequest(WebhookRequest):
    """POST /webhook/turn: a message of the chat stored as context for later replies, answered by nothing (a
    group bot that sees more than it answers). ``sfw`` is not read."""


class ForgetRequest(Body):
    """POST /webhook/forget: delete a person's turns in a chat (and the replies to them)."""

    chat_id: Annotated[str, StringConstraints(min_length=1, max_length=KEY_CHARACTERS)] | int
    client_name: Annotated[str, Printable, StringConstraints(min_length=1)] | None = None
    sender_id: Annotated[str, StringConstraints(min_length=1, max_length=KEY_CHARACTERS)] | int

    client = WebhookRequest.client
    chat = WebhookRequest.chat


def anonymous_client(key: str | None) -> str:
    """The history key of clients that give no name: one per API key (a digest, never the key), which no named
    client can claim (names hold no control characters)."""
    import hashlib

    return "\x1fkey:" + hashlib.sha256(key.encode()).hexdigest()[:16] if key else "\x1fanonymous"


class ChatRequest(Body):
    """What Ollama's and OpenAI's chat requests share: the model and the messages."""

    model: str
    messages: Messages

    def chat_messages(self, speakers: bool = True) -> list[dict[str, str]]:
        """The messages as the backends take them; ``speakers``: a user turn keeps its ``name`` as its speaker."""
        messages = [message.as_dict() for message in self.messages]
        return messages if speakers else [{k: v for k, v in m.items() if k != "speaker"} for m in messages]


class StreamOptions(Body):
    include_usage: bool = False


class OpenAIChatRequest(ChatRequest):
    """POST /v1/chat/completions. Every option OpenAI's API has is either honoured or refused with a 400 naming it
    (:meth:`unsupported`); a client never gets a silently different result."""

    stream: bool = False
    temperature: Temperature | None = None
    top_p: TopP | None = None
    max_tokens: Count | None = None
    max_completion_tokens: Count | None = None
    stop: Stop | None = None
    seed: int | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    stream_options: StreamOptions | None = None
    n: Count | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict | None = None
    tools: list | None = None
    tool_choice: str | dict | None = None
    functions: list | None = None
    function_call: str | dict | None = None
    logit_bias: dict | None = None
    modalities: list[str] | None = None
    audio: dict | None = None
    prediction: dict | None = None

    def unsupported(self) -> list[str]:
        """The options asked for that the service does not do, each with why."""
        problems = []
        if self.n not in (None, 1):
            problems.append(f"'n': {self.n} (one choice per request: send the request again for another)")
        if self.logprobs or self.top_logprobs:
            problems.append("'logprobs'/'top_logprobs' (replies come without log-probabilities)")
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            problems.append(f"'response_format' {self.response_format.get('type')!r} (replies are free text)")
        if self.tools and self.tool_choice != "none":
            problems.append("'tools' (the responders make no tool calls)")
        if self.tool_choice not in (None, "none", "auto") and not self.tools:
            problems.append(f"'tool_choice' {self.tool_choice!r} (the responders make no tool calls)")
        if self.functions or self.function_call not in (None, "none", "auto"):
            problems.append("'functions'/'function_call' (the responders make no function calls)")
        if self.logit_bias:
            problems.append("'logit_bias' (not applied to the responders' tokens)")
        if self.audio or (self.modalities and self.modalities != ["text"]):
            problems.append("'audio'/'modalities' (replies are text)")
        if self.prediction:
            problems.append("'prediction' (no predicted outputs)")
        return problems


class OllamaOptions(Body):
    temperature: Temperature | None = None
    top_p: TopP | None = None
    num_predict: Annotated[int, Field(ge=-2)] | None = None
    stop: Stop | None = None
    seed: int | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None

    @field_validator("num_predict")
    @classmethod
    def _not_zero(cls, value: int | None) -> int | None:
        if value == 0:
            raise ValueError("zero")
        return value


class OllamaChatRequest(ChatRequest):
    """POST /api/chat."""

    stream: bool = True
    options: OllamaOptions | None = None
    format: str | dict | None = None
    tools: list | None = None

    def unsupported(self) -> list[str]:
        problems = []
        if self.format:
            problems.append(f"'format' {self.format!r} (replies are free text)")
        if self.tools:
            problems.append("'tools' (the responders make no tool calls)")
        return problems


def parse(schema: type[T], data: dict) -> T:
    """``data`` as ``schema``; a ValueError whose one-line message names every bad field otherwise."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ValueError(describe(exc)) from None


def describe(exc: ValidationError) -> str:
    """``'max_tokens' must be a whole number of at least 1; 'messages[2].role' must be …`` (each field once)."""
    problems: dict[str, str] = {}
    for error in exc.errors():
        path, name = _path(error["loc"])
        problems.setdefault(path, f"'{path}' must be {MUST_BE[name]}" if name in MUST_BE else f"'{path}': "
                            f"{error['msg']}")
    return "; ".join(problems.values())


def _path(loc: tuple) -> tuple[str, str]:
    """The field's path (``messages[2].role``) and its name, up to pydantic's first union branch tag."""
    path, name = "", ""
    for item in loc:
        if isinstance(item, int):
            path += f"[{item}]"
        elif item in MUST_BE:
            path, name = (f"{path}.{item}" if path else item), item
        else:  # a branch of a union ('str', 'list[str]'): the field is named already
            break
    return path or "body", name

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
    "client_name": f"a string of at most {KEY_CHARACTERS} characters",
    "sender_name": f"a string of at most {KEY_CHARACTERS} characters",
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
}


class Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False, frozen=True)


T = TypeVar("T", bound=Body)
Temperature = Annotated[float, Field(ge=0, le=100)]
TopP = Annotated[float, Field(gt=0, le=1)]
Count = Annotated[int, Field(ge=1)]
Stop = str | list[str]


class TextPart(Body):
    """One part of an OpenAI message's content given as a list; only text parts are understood."""

    type: Literal["text"]
    text: str


Name = Annotated[str, StringConstraints(max_length=KEY_CHARACTERS)]


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
    client_name: Annotated[str, StringConstraints(max_length=KEY_CHARACTERS)] | None = None
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

    @property
    def client(self) -> str:
        return self.client_name or "default"


class ChatRequest(Body):
    """What Ollama's and OpenAI's chat requests share: the model and the messages."""

    model: str
    messages: Messages

    def chat_messages(self, speakers: bool = True) -> list[dict[str, str]]:
        """The messages as the backends take them; ``speakers``: a user turn keeps its ``name`` as its speaker."""
        messages = [message.as_dict() for message in self.messages]
        return messages if speakers else [{k: v for k, v in m.items() if k != "speaker"} for m in messages]


class OpenAIChatRequest(ChatRequest):
    """POST /v1/chat/completions."""

    stream: bool = False
    temperature: Temperature | None = None
    top_p: TopP | None = None
    max_tokens: Count | None = None
    max_completion_tokens: Count | None = None
    stop: Stop | None = None
    seed: int | None = None


class OllamaOptions(Body):
    temperature: Temperature | None = None
    top_p: TopP | None = None
    num_predict: Annotated[int, Field(ge=-2)] | None = None
    stop: Stop | None = None
    seed: int | None = None

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

"""A merged Hugging Face model folder served by transformers (CPU or GPU, full precision)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from cookiebaker.backends.base import Backend, Chunk, Sampling, Usage, by_prompt, iterate_in_thread
from cookiebaker.quality import Reply


class TransformersBackend(Backend):
    """A merged Hugging Face model folder served by transformers."""

    def __init__(self, folder: Path, sampling: Sampling) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from cookiebaker.chat import supports_system_role

        super().__init__(sampling)
        self.description = f"transformers:{folder.name}"
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        self.lock = threading.Lock()
        self.context_length = getattr(self.model.config, "max_position_embeddings", None)
        self.system_role = supports_system_role(self.tokenizer)

    def text_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_tokens(self, messages: list[dict], sampling: Sampling) -> int:
        ids = self.tokenizer.apply_chat_template(self.prepare(messages, sampling), add_generation_prompt=True,
                                                 return_dict=True)["input_ids"]
        return len(ids)

    def _generate_arguments(self, messages: list[dict], sampling: Sampling) -> dict:
        ids = self.tokenizer.apply_chat_template(self.prepare(messages, sampling), add_generation_prompt=True,
                                                 return_tensors="pt", return_dict=True)
        room = sampling.max_tokens
        if self.context_length:
            room = max(1, min(room, self.context_length - ids["input_ids"].shape[1]))
        kwargs = {**ids, "max_new_tokens": room, "do_sample": sampling.temperature > 0,
                  "pad_token_id": self.tokenizer.eos_token_id}
        if sampling.temperature > 0:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p)
        if sampling.stop:
            kwargs.update(stop_strings=sampling.stop, tokenizer=self.tokenizer)
        return kwargs

    def reply(self, messages: list[dict], sampling: Sampling) -> Reply:
        import torch

        with self.lock:
            kwargs = self._generate_arguments(messages, sampling)
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            with torch.no_grad():
                output = self.model.generate(**kwargs)
        new = output[0, kwargs["input_ids"].shape[1]:].tolist()
        raw = self.tokenizer.decode(new, skip_special_tokens=False)
        ended = bool(new) and new[-1] in self._end_ids()
        stopped = ended or any(stop in raw for stop in sampling.stop)
        text = self.tokenizer.decode(new[:-1] if ended else new,
                                     skip_special_tokens=True)
        for stop in sampling.stop:
            text = text.split(stop)[0]
        return Reply(text, "stop" if stopped else "length")

    def _end_ids(self) -> set[int]:
        configured = self.model.generation_config.eos_token_id
        ids = configured if isinstance(configured, list) else [configured, self.tokenizer.eos_token_id]
        return {i for i in ids if i is not None}

    def score(self, conversations: list[list[dict]], max_length: int) -> list[tuple[float, int]]:
        import torch

        from cookiebaker.chat import IGNORE, encode, normalize, supports_system_role

        system_role = supports_system_role(self.tokenizer)
        results = []
        with self.lock, torch.no_grad():
            for messages in conversations:
                sample = encode(self.tokenizer, normalize(messages, system_role), max_length)
                logits = self.model(torch.tensor([sample.input_ids])).logits[0, :-1].float()
                labels = torch.tensor(sample.labels[1:])
                total = torch.nn.functional.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum")
                results.append((float(total), int((labels != IGNORE).sum())))
        return results

    def score_replies(self, prompts: list[list[dict]], requests: list[tuple[int, str]], max_length: int,
                      reply_tokens: int | None = None) -> list[float]:
        """The replies to one prompt in one padded forward."""
        import torch

        from cookiebaker.chat import IGNORE, encode, normalize

        scores = [0.0] * len(requests)
        with self.lock, torch.no_grad():
            for prompt, members in by_prompt(requests).items():
                messages = normalize(prompts[prompt], self.system_role)
                samples = [encode(self.tokenizer, [*messages, {"role": "assistant", "content": text}], max_length,
                                  last_only=True) for _, text in members]
                if reply_tokens is not None:
                    samples = [_first_labels(sample, reply_tokens) for sample in samples]
                width = max(len(sample.input_ids) for sample in samples)
                ids = torch.tensor([s.input_ids + [0] * (width - len(s.input_ids)) for s in samples])
                mask = torch.tensor([[1] * len(s.input_ids) + [0] * (width - len(s.input_ids)) for s in samples])
                labels = torch.tensor([s.labels + [IGNORE] * (width - len(s.labels)) for s in samples])[:, 1:]
                logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
                nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE,
                                                        reduction="none").sum(dim=1)
                for (index, _), value in zip(members, nll.tolist()):
                    scores[index] = -value
        return scores

    def stream(self, messages: list[dict], sampling: Sampling) -> AsyncIterator[Chunk]:
        from transformers import TextIteratorStreamer

        def generate(stop: threading.Event) -> Iterator[Chunk]:
            from transformers import StoppingCriteria

            class Stop(StoppingCriteria):
                def __call__(self, input_ids, scores, **kwargs) -> bool:  # noqa: ANN001
                    return stop.is_set()

            with self.lock:
                if stop.is_set():  # the client left while this waited for the model
                    return
                streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
                kwargs = {**self._generate_arguments(messages, sampling), "streamer": streamer,
                          "stopping_criteria": [Stop()]}
                output: list = []
                worker = threading.Thread(target=lambda: output.append(self.model.generate(**kwargs)), daemon=True)
                worker.start()
                try:
                    for piece in streamer:
                        if piece:
                            yield Chunk(piece)
                finally:
                    stop.set()
                    worker.join()
                if output:  # why it ended: the end-of-turn token, or the token limit
                    prompt = kwargs["input_ids"].shape[1]
                    new = output[0][0, prompt:].tolist()
                    finish = "stop" if new and new[-1] in self._end_ids() or len(new) < kwargs["max_new_tokens"] \
                        else "length"
                    yield Chunk("", finish, Usage(prompt, len(new)))

        return iterate_in_thread(generate)  # closing it ends the generation


def _first_labels(sample, count: int):  # noqa: ANN001, ANN202
    """An encoded sample with only its first ``count`` labelled tokens labelled."""
    from cookiebaker.chat import IGNORE, Encoded

    labels, seen = [], 0
    for label in sample.labels:
        keep = label != IGNORE and seen < count
        seen += label != IGNORE
        labels.append(label if keep else IGNORE)
    return Encoded(sample.input_ids, labels, sample.truncated)

"""The Hugging Face Trainer, specialised: loss only where there are labels (no logits elsewhere),
padding-free batches, token counting, and a loss curve."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DataCollatorWithFlattening, Trainer, TrainerCallback

log = logging.getLogger(__name__)

PARTIAL_DIR = ".partial"
#: Files every complete checkpoint has (the trainer state is written last).
CHECKPOINT_FILES = ("adapter_config.json", "trainer_state.json")


class ResponseOnlyTrainer(Trainer):
    """Computes the language-model loss from the logits of labelled positions only.

    Batches are flattened (one row, ``position_ids`` restarting per sample), so no compute is spent on padding;
    the model is asked for the logits of the positions whose next token is a label, which for a 256k-token
    vocabulary (Gemma) saves most of the head's compute and memory.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # compute_loss normalises by the number of label tokens of the whole accumulated batch itself.
        self.model_accepts_loss_kwargs = True
        self.tokens_seen = 0

    def _save_checkpoint(self, model, trial) -> None:  # noqa: ANN001
        """Write ``checkpoint-N`` aside (``.partial/``), then rename it into place: a run killed while saving
        leaves no half-written checkpoint for --resume to pick."""
        run_dir = Path(self._get_output_dir(trial=trial))
        partial, name = run_dir / PARTIAL_DIR, f"checkpoint-{self.state.global_step}"
        self._get_output_dir = lambda trial=None: str(partial)  # the folder Trainer writes this checkpoint into
        try:
            super()._save_checkpoint(model, trial)
        finally:
            del self._get_output_dir  # the class's method again
        if self.args.should_save:
            target = run_dir / name
            if target.exists():
                shutil.rmtree(target)
            os.replace(partial / name, target)
            shutil.rmtree(partial, ignore_errors=True)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
        labels = inputs.pop("labels")
        if labels.shape[0] != 1:
            raise RuntimeError("ResponseOnlyTrainer expects flattened batches (one row)")
        targets = labels[0, 1:]
        keep = torch.nonzero(targets != -100).squeeze(-1)
        outputs = model(**inputs, logits_to_keep=keep, use_cache=False)
        logits = outputs.logits[0].float()
        loss = F.cross_entropy(logits, targets[keep], reduction="sum")
        if num_items_in_batch is not None:
            loss = loss / num_items_in_batch.to(loss.device)
        else:
            loss = loss / max(len(keep), 1)
        if model.training:
            self.tokens_seen += int(inputs["input_ids"].numel())
        return (loss, outputs) if return_outputs else loss


def flattening_collator() -> DataCollatorWithFlattening:
    return DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)


class ThroughputCallback(TrainerCallback):
    """Wall time of the training loop itself (not loading, not evaluation)."""

    def __init__(self) -> None:
        self.started = 0.0
        self.seconds = 0.0

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        self.started = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
        self.seconds += time.perf_counter() - self.started


def write_loss_curve(log_history: list[dict], before: float | None, after: float | None, target: Path) -> None:
    """Loss curve as JSON (a DVC plot) and PNG."""
    points = [{"step": entry["step"], "train_loss": entry["loss"]} for entry in log_history if "loss" in entry]
    evals = [{"step": 0, "eval_loss": before}] if before is not None else []
    if after is not None:
        evals.append({"step": max([p["step"] for p in points], default=0), "eval_loss": after})
    (target.with_suffix(".json")).write_text(json.dumps({"train": points, "eval": evals}, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    if points:
        axis.plot([p["step"] for p in points], [p["train_loss"] for p in points], label="train loss", lw=1.2)
    if evals:
        axis.plot([e["step"] for e in evals], [e["eval_loss"] for e in evals], "o--", label="eval loss")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("loss (response tokens)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(target.with_suffix(".png"), dpi=110)
    plt.close(figure)

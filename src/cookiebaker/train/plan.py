"""What the hardware allows: the product recipe on CUDA (QLoRA), its closest equivalent on CPU, said aloud."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from cookiebaker.errors import ModelError

log = logging.getLogger(__name__)


@dataclass
class Plan:
    device: str
    quantize_4bit: bool
    mixed_precision: str | None  # "bf16", "fp16" or None (fp32)
    optimizer: str
    gradient_checkpointing: bool
    attn_implementation: str | None
    compute_dtype: torch.dtype = torch.float32
    changes: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        return {"device": self.device, "quantize_4bit": self.quantize_4bit, "mixed_precision": self.mixed_precision,
                "optimizer": self.optimizer, "gradient_checkpointing": self.gradient_checkpointing,
                "attn_implementation": self.attn_implementation, "changes": self.changes}


def cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def make_plan(*, quantization: str, precision: str, optimizer: str, gradient_checkpointing: str | bool,
              attn_implementation: str, model_type: str) -> Plan:
    cuda = torch.cuda.is_available()
    changes: list[str] = []
    if cuda:
        quantize = quantization in ("auto", "nf4")
        if quantize:
            try:
                import bitsandbytes  # noqa: F401
            except ImportError:
                if quantization == "nf4":
                    raise ModelError("quantization 'nf4' needs bitsandbytes: pip install -e '.[cuda]'") from None
                quantize = False
                changes.append("4-bit NF4 needs bitsandbytes (pip install bitsandbytes): loading the base in 16 bit")
        if precision == "auto":
            # Gemma-2 overflows in fp16; bf16 where the GPU has it, fp16 only where it does not.
            mixed = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            if mixed == "fp16":
                changes.append("this GPU has no bf16: mixed precision in fp16 (Gemma-2 may be unstable)")
        else:
            mixed = None if precision == "fp32" else precision
        optim = "paged_adamw_8bit" if optimizer == "auto" and quantize else ("adamw_torch" if optimizer == "auto"
                                                                            else optimizer)
        checkpointing = True if gradient_checkpointing == "auto" else bool(gradient_checkpointing)
    else:
        if quantization == "nf4":
            from cookiebaker.errors import ConfigError

            raise ConfigError("quantization 'nf4' needs a CUDA GPU (bitsandbytes); use 'auto' or 'none' on CPU")
        quantize = False
        if quantization == "auto":
            changes.append("no CUDA GPU: the base is loaded in full precision instead of 4-bit NF4")
        if precision == "auto":
            mixed = "bf16" if cpu_has_bf16() else None
            changes.append("CPU: bf16 autocast (this CPU computes bf16 natively)" if mixed
                           else "CPU without native bf16: training in fp32")
        else:
            mixed = None if precision == "fp32" else precision
            if mixed == "fp16":
                from cookiebaker.errors import ConfigError

                raise ConfigError("precision 'fp16' needs a CUDA GPU; use bf16 or fp32 on CPU")
        if optimizer in ("auto", "paged_adamw_8bit"):
            optim = "adamw_torch"
            changes.append("paged AdamW 8-bit needs CUDA: using AdamW (torch)")
        else:
            optim = optimizer
        checkpointing = False if gradient_checkpointing == "auto" else bool(gradient_checkpointing)
    if attn_implementation == "auto":
        # Gemma-2 soft-caps attention logits, which only the eager implementation does.
        attn = "eager" if model_type.startswith("gemma2") or model_type.startswith("gemma3") else "sdpa"
    else:
        attn = attn_implementation
    compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed or "", torch.float32)
    plan = Plan("cuda" if cuda else "cpu", quantize, mixed, optim, checkpointing, attn, compute, changes)
    for change in changes:
        log.info("recipe change: %s", change)
    return plan

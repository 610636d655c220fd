#!/usr/bin/env python3
"""Make PEFT LoRA adapter fixtures on the tiny random Qwen2 fixture, and check adapters
earguard wrote with PEFT.

What it makes (under crates/earguard-train/tests/fixtures/):

  peft-tiny-qwen2/        LoRA r 4, alpha 8 on q/k/v/o/gate/up/down of both layers
  peft-tiny-qwen2-rslora/ LoRA r 2, alpha 3, use_rslora, q_proj and v_proj of layer 1 only
                          (layers_to_transform)

Each holds PEFT's own `adapter_config.json` + `adapter_model.safetensors` (written by
`PeftModel.save_pretrained`) and `expected.safetensors`: `input_ids` (the tiny fixture's
prompt) and `logits` `[1, seq, vocab]` of the adapted model (float32, eager attention, CPU).
The adapters' A and B are drawn N(0, 0.1²) from a seeded generator so that neither is zero.

    pip install -r scripts/requirements-fixtures.txt peft==0.21.2
    python scripts/make_lora_fixture.py                 # writes the fixtures in place
    python scripts/make_lora_fixture.py --check DIR     # load an earguard adapter with PEFT
                                                        # and print its logits' difference
                                                        # from DIR/expected.safetensors

Made with python 3.11.7, torch 2.15.0, transformers 5.23.0, peft 0.21.2, safetensors 0.8.0.
Deterministic: seeded generator, one torch thread.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import Qwen2ForCausalLM  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "crates/earguard-model/tests/fixtures/hf/tiny-qwen2"
OUT = ROOT / "crates/earguard-train/tests/fixtures"
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def base_model() -> Qwen2ForCausalLM:
    m = Qwen2ForCausalLM.from_pretrained(BASE, attn_implementation="eager", dtype=torch.float32)
    return m.eval()


def input_ids() -> torch.Tensor:
    return load_file(BASE / "expected.safetensors")["input_ids"].long()


def make(name: str, config: LoraConfig, seed: int) -> None:
    model = get_peft_model(base_model(), config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in sorted(model.named_parameters()):
            if "lora_A" in pname or "lora_B" in pname:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    model.eval()
    # Name the base by its fixture directory, not this machine's absolute path.
    model.peft_config["default"].base_model_name_or_path = "tiny-qwen2"
    out = OUT / name
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    (out / "README.md").unlink(missing_ok=True)  # PEFT's model-card template
    ids = input_ids()
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
        plain = base_model()(input_ids=ids).logits.float()
    print(f"{name}: adapter moves the logits by up to {(logits - plain).abs().max():.4f}")
    save_file(
        {"input_ids": ids.to(torch.int64).contiguous(), "logits": logits.contiguous()},
        out / "expected.safetensors",
        metadata={"peft": __import__("peft").__version__, "torch": torch.__version__},
    )


def check(adapter_dir: Path) -> None:
    """Load an adapter earguard wrote with PEFT; compare with the logits earguard computed."""
    model = PeftModel.from_pretrained(base_model(), adapter_dir).eval()
    exp = load_file(adapter_dir / "expected.safetensors")
    with torch.no_grad():
        logits = model(input_ids=exp["input_ids"].long()).logits.float()
    diff = (logits - exp["logits"]).abs().max().item()
    print(f"PEFT vs earguard logits: max abs difference {diff:.3e}")
    if diff > 1e-4:
        raise SystemExit(f"difference {diff} exceeds 1e-4")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", type=Path, help="an adapter directory earguard wrote")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.check:
        check(args.check)
        return
    make(
        "peft-tiny-qwen2",
        LoraConfig(r=4, lora_alpha=8, target_modules=ALL, lora_dropout=0.0, bias="none",
                   task_type="CAUSAL_LM"),
        seed=11,
    )
    make(
        "peft-tiny-qwen2-rslora",
        LoraConfig(r=2, lora_alpha=3, target_modules=["q_proj", "v_proj"],
                   layers_to_transform=[1], use_rslora=True, lora_dropout=0.0, bias="none",
                   task_type="CAUSAL_LM"),
        seed=12,
    )


if __name__ == "__main__":
    main()

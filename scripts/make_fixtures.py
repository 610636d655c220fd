#!/usr/bin/env python3
"""Generate small numeric reference fixtures with HF transformers.

What it makes (under crates/earguard-model/tests/fixtures/hf/):

  tiny-qwen2/        random Qwen2ForCausalLM (2 layers, hidden 64, 4 heads / 2 KV heads,
                     q/k/v bias, untied lm_head) + byte-level BPE tokenizer (ChatML) +
                     expected.safetensors (single prompt, left-padded batch, greedy decode)
  tiny-llama/        random LlamaForCausalLM (same sizes, tied embeddings, no bias), same
                     kind of tokenizer and expected.safetensors
  tiny-qwen2-audio/  random Qwen2AudioForConditionalGeneration (tiny Whisper-style audio
                     encoder + tiny Qwen2 LM), tokenizer with the audio special tokens,
                     preprocessor_config.json (WhisperFeatureExtractor, 128 mel bins) and
                     expected.safetensors (mel features -> encoder -> projector -> merge -> LM)

Every tensor, dtype, shape and convention is described in the README.md next to the
fixtures (written by hand, keep it in sync with this script).

How to run (CPU only, no network access to any model hub is needed or used):

    pip install -r scripts/requirements-fixtures.txt
    python scripts/make_fixtures.py            # writes the fixtures in place
    python scripts/make_fixtures.py --out DIR  # writes them somewhere else

Made with: python 3.11.7, torch 2.15.0 (CPU build of the default wheel), transformers 5.23.0,
tokenizers 0.23.3, safetensors 0.8.0, numpy 2.4.6, jinja2 3.1.6.

Determinism: all randomness comes from explicit seeds (torch.Generator / numpy
default_rng); torch runs single-threaded. Two runs on the same machine produce
byte-identical files (checked with sha256). Weights are written by this script
directly (not by transformers' init code) so they do not depend on the init scheme of
a particular transformers version; the computed activations may still move by ~1e-7
across torch/transformers versions or CPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

# Never touch a model hub: everything here is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers  # noqa: E402
from tokenizers import pre_tokenizers, processors, trainers  # noqa: E402

import transformers  # noqa: E402
from transformers import (  # noqa: E402
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2AudioConfig,
    Qwen2AudioForConditionalGeneration,
    Qwen2Config,
    Qwen2ForCausalLM,
    WhisperFeatureExtractor,
)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "crates" / "earguard-model" / "tests" / "fixtures" / "hf"

VOCAB = 512
WEIGHT_STD = 0.1  # larger than the usual 0.02 so that the comparisons are discriminative

# ---------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------

# Qwen2's pre-tokenizer split regex (same as in Qwen2's tokenizer.json).
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Same order as in Qwen2 / Qwen2-Audio: <|endoftext|> 151643, <|im_start|> 151644,
# <|im_end|> 151645, <|AUDIO|> 151646, <|audio_bos|> 151647, <|audio_eos|> 151648.
TEXT_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
AUDIO_SPECIALS = ["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]
N_BPE = VOCAB - 16  # trained vocab size target (bytes + merges); specials come after

CORPUS = """\
You are a helpful assistant. The user asks a question and the assistant answers it.
system user assistant system user assistant
Hello! How are you today? I am fine, thank you. What is the weather like?
The quick brown fox jumps over the lazy dog. A small model runs on the CPU.
Audio 1: What is that sound? It is the sound of glass breaking. Listen to the audio
and describe what you hear. Transcribe the speech in English. The speaker says hello.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024. Code: fn main() { println!("hi"); }
Tokens, tokens, tokens: the tokenizer splits text into tokens before the model sees it.
Generate the caption in English: a dog barks, a bird sings, the wind blows, rain falls.
"""


def build_tokenizer(with_audio: bool) -> Tokenizer:
    tok = Tokenizer(models.BPE(dropout=None, unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=N_BPE,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    corpus = [line for line in CORPUS.splitlines()] * 4
    tok.train_from_iterator(corpus, trainer=trainer)
    specials = TEXT_SPECIALS + (AUDIO_SPECIALS if with_audio else [])
    tok.add_special_tokens(
        [AddedToken(s, special=True, normalized=False, lstrip=False, rstrip=False, single_word=False) for s in specials]
    )
    assert tok.get_vocab_size(with_added_tokens=True) <= VOCAB, tok.get_vocab_size()
    for s in specials:
        assert tok.token_to_id(s) is not None and tok.token_to_id(s) < VOCAB
    return tok


QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Qwen2-Audio's chat template (as in transformers' Qwen2AudioProcessor.default_chat_template).
QWEN2_AUDIO_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if 'audio' in content or 'audio_url' in content or message['type'] == 'audio' or content['type'] == 'audio' %}"
    "{% set audio_count.value = audio_count.value + 1 %}"
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif 'text' in content %}"
    "{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "<|im_start|>assistant\n"
    "{% endif %}"
)


def save_tokenizer(tok: Tokenizer, out: Path, chat_template: str, with_audio: bool) -> None:
    tok.save(str(out / "tokenizer.json"))
    specials = TEXT_SPECIALS + (AUDIO_SPECIALS if with_audio else [])
    cfg = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(tok.token_to_id(s)): {
                "content": s,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for s in specials
        },
        "additional_special_tokens": specials[1:],
        "bos_token": None,
        "chat_template": chat_template,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": None,
    }
    with open(out / "tokenizer_config.json", "w") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)
        f.write("\n")


# ---------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int) -> None:
    """Overwrite every parameter/buffer-like weight deterministically.

    Matrices / embeddings / convs ~ N(0, WEIGHT_STD); biases ~ N(0, WEIGHT_STD);
    norm weights (RMSNorm / LayerNorm gains) ~ 1 + N(0, WEIGHT_STD). Parameters are
    visited in sorted-name order so the result does not depend on module order.
    Tied parameters (Llama) are visited once.
    """
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())  # deduplicated (tied weights appear once)
    for name in sorted(params):
        p = params[name]
        noise = torch.randn(p.shape, generator=g, dtype=torch.float32) * WEIGHT_STD
        is_norm_gain = p.ndim == 1 and name.endswith("weight") and ("norm" in name)
        if is_norm_gain:
            p.copy_(1.0 + noise)
        else:
            p.copy_(noise)


def register_capture(model_core, store: dict, prefix: str):
    """Hooks on decoder blocks (resid_post.{l}) and the final norm (final_norm)."""
    handles = []
    for l, layer in enumerate(model_core.layers):

        def hook(_m, _inp, out, l=l):
            t = out[0] if isinstance(out, tuple) else out
            store[f"{prefix}resid_post.{l}"] = t.detach().clone()

        handles.append(layer.register_forward_hook(hook))

    def norm_hook(_m, _inp, out):
        store[f"{prefix}final_norm"] = out.detach().clone()

    handles.append(model_core.norm.register_forward_hook(norm_hook))

    def embed_hook(_m, _inp, out):
        store[f"{prefix}embeds"] = out.detach().clone()

    handles.append(model_core.embed_tokens.register_forward_hook(embed_hook))
    return handles


_ST_DTYPES = {torch.float32: "F32", torch.int64: "I64", torch.int32: "I32"}


def save_tensors(path: Path, tensors: dict, metadata: dict) -> None:
    """Write a safetensors file with a byte-stable header.

    safetensors' own writer emits `__metadata__` in hash-map order, which changes from run
    to run; this writer sorts metadata keys and tensor names so that the file's sha256 is
    reproducible. The result is read back with the safetensors library and compared.
    """
    header: dict = {"__metadata__": {k: str(metadata[k]) for k in sorted(metadata)}}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        v = tensors[name].detach().contiguous().cpu()
        assert torch.isfinite(v.float()).all(), name
        raw = v.numpy().tobytes()  # little-endian on every platform we run on
        header[name] = {"dtype": _ST_DTYPES[v.dtype], "shape": list(v.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    hjson = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    hjson += b" " * (-len(hjson) % 8)  # pad the header to a multiple of 8 bytes
    with open(path, "wb") as f:
        f.write(len(hjson).to_bytes(8, "little"))
        f.write(hjson)
        for raw in blobs:
            f.write(raw)
    back = load_file(str(path))
    assert sorted(back) == sorted(tensors)
    for name, v in tensors.items():
        assert back[name].dtype == v.dtype and torch.equal(back[name], v.detach().cpu()), name


def save_model(model, out: Path, rope_theta: float) -> None:
    # transformers 5 always writes safetensors (the safe_serialization flag of 4.x is gone);
    # pass it only where it still exists.
    import inspect

    kw = {}
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        kw["safe_serialization"] = True
    model.save_pretrained(str(out), **kw)
    assert (out / "model.safetensors").exists()
    # transformers 5 writes `rope_parameters: {rope_theta, rope_type}` instead of the
    # top-level `rope_theta` that published Qwen2/Llama/Qwen2-Audio config.json files
    # carry. Add the top-level key too (transformers 5 still reads it) so that the fixture
    # configs look like both the old and the new layout.
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    targets = [cfg["text_config"]] if "text_config" in cfg else [cfg]
    for c in targets:
        assert c["rope_parameters"]["rope_theta"] == rope_theta, c["rope_parameters"]
        assert c["rope_parameters"]["rope_type"] == "default"
        c["rope_theta"] = rope_theta
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


@torch.no_grad()
def check_reload(cls, out: Path, ref_logits: torch.Tensor, **inputs) -> None:
    """The files on disk (not just the in-memory model) must reproduce the logits."""
    m = cls.from_pretrained(str(out), attn_implementation="eager", dtype=torch.float32)
    m.eval()
    got = m(**inputs, use_cache=False).logits
    assert torch.equal(got, ref_logits), (got - ref_logits).abs().max()


# ---------------------------------------------------------------------------------------
# Text models
# ---------------------------------------------------------------------------------------

# Case A: a raw ChatML prompt (the chat template would also prepend the default system
# message; the check below asserts that the template's output ends with this text).
PROMPT_A_USER = "Hello you!"
PROMPT_A = "<|im_start|>user\n" + PROMPT_A_USER + "<|im_end|>\n<|im_start|>assistant\n"  # 12 tokens
PROMPT_B_TEXT = "A dog barks, a bird sings"  # chosen so that it encodes to exactly 7 tokens


def text_case(kind: str, out_root: Path, seed: int) -> None:
    out = out_root / f"tiny-{kind}"
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(with_audio=False)
    save_tokenizer(tok, out, QWEN2_CHAT_TEMPLATE, with_audio=False)
    eos = tok.token_to_id("<|im_end|>")
    pad = tok.token_to_id("<|endoftext|>")

    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_act="silu",
        max_position_embeddings=256,
        initializer_range=WEIGHT_STD,
        rope_theta=10000.0,
        bos_token_id=None,
        eos_token_id=eos,
        pad_token_id=pad,
        use_cache=True,
        attn_implementation="eager",
    )
    if kind == "qwen2":
        config = Qwen2Config(**common, rms_norm_eps=1e-6, tie_word_embeddings=False, use_sliding_window=False)
        model = Qwen2ForCausalLM(config)
    else:
        config = LlamaConfig(**common, rms_norm_eps=1e-5, tie_word_embeddings=True, attention_bias=False, mlp_bias=False)
        model = LlamaForCausalLM(config)
    assert model.config._attn_implementation == "eager"
    randomize(model, seed)
    if kind == "llama":
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model.eval()
    model.generation_config = GenerationConfig(bos_token_id=None, eos_token_id=eos, pad_token_id=pad)
    save_model(model, out, rope_theta=10000.0)

    # ---- prompts (through the tokenizer + chat template, via transformers) ----
    hf_tok = PreTrainedTokenizerFast.from_pretrained(str(out))
    templated = hf_tok.apply_chat_template(
        [{"role": "user", "content": PROMPT_A_USER}], tokenize=False, add_generation_prompt=True
    )
    assert templated == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" + PROMPT_A, templated
    prompt_a = PROMPT_A
    ids_a = tok.encode(prompt_a).ids
    assert len(ids_a) == 12, (len(ids_a), tok.encode(prompt_a).tokens)
    assert ids_a[0] == tok.token_to_id("<|im_start|>")
    ids_b1 = tok.encode(PROMPT_B_TEXT).ids
    assert len(ids_b1) == 7, (len(ids_b1), tok.encode(PROMPT_B_TEXT).tokens)
    assert hf_tok(prompt_a)["input_ids"] == ids_a  # transformers agrees with tokenizers
    assert max(ids_a + ids_b1) < VOCAB

    t: dict[str, torch.Tensor] = {}

    # ---- case A: single sequence ----
    input_ids = torch.tensor([ids_a], dtype=torch.long)
    cap: dict = {}
    hs = register_capture(model.model, cap, "")
    with torch.no_grad():
        res = model(input_ids=input_ids, output_hidden_states=True, use_cache=False)
    for h in hs:
        h.remove()
    L = config.num_hidden_layers
    assert len(res.hidden_states) == L + 1
    assert torch.equal(res.hidden_states[0], cap["embeds"])
    # HF convention: hidden_states[l] for 1 <= l < L is the output of block l-1; the last
    # entry is AFTER the final norm. Check that against the hooks.
    for l in range(L - 1):
        assert torch.equal(res.hidden_states[l + 1], cap[f"resid_post.{l}"])
    assert torch.equal(res.hidden_states[L], cap["final_norm"])
    t["input_ids"] = input_ids
    t["embeds"] = cap["embeds"]
    for l in range(L):
        t[f"resid_post.{l}"] = cap[f"resid_post.{l}"]
    t["final_norm"] = cap["final_norm"]
    t["logits"] = res.logits.float()

    # ---- case B: batch of 2, left padded ----
    T = 12
    seqs = [ids_a, ids_b1]
    b_ids = torch.full((2, T), pad, dtype=torch.long)
    b_mask = torch.zeros((2, T), dtype=torch.long)
    for i, s in enumerate(seqs):
        b_ids[i, T - len(s):] = torch.tensor(s)
        b_mask[i, T - len(s):] = 1
    b_pos = (b_mask.cumsum(-1) - 1).clamp(min=0)
    cap = {}
    hs = register_capture(model.model, cap, "batch.")
    with torch.no_grad():
        res_b = model(input_ids=b_ids, attention_mask=b_mask, position_ids=b_pos, use_cache=False)
    for h in hs:
        h.remove()
    t["batch.input_ids"] = b_ids
    t["batch.attention_mask"] = b_mask
    t["batch.position_ids"] = b_pos
    for l in range(L):
        t[f"batch.resid_post.{l}"] = cap[f"batch.resid_post.{l}"]
    t["batch.final_norm"] = cap["batch.final_norm"]
    t["batch.logits"] = res_b.logits.float()
    # Row 0 is the same sequence as case A (no padding): must agree with case A.
    assert torch.allclose(res_b.logits[0], res.logits[0], atol=1e-5)
    # Row 1's real positions must agree with an unpadded run of the same 7 tokens.
    with torch.no_grad():
        solo = model(input_ids=torch.tensor([ids_b1]), use_cache=False).logits
    assert torch.allclose(res_b.logits[1, T - 7:], solo[0], atol=1e-5), (res_b.logits[1, T - 7:] - solo[0]).abs().max()

    # ---- case C: greedy decoding with the KV cache ----
    gen_cfg = GenerationConfig(
        do_sample=False,
        max_new_tokens=8,
        eos_token_id=None,  # never stop early: always exactly 8 new tokens
        pad_token_id=pad,
        bos_token_id=None,
        return_dict_in_generate=True,
        output_logits=True,
    )
    with torch.no_grad():
        g = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            generation_config=gen_cfg,
        )
    new = g.sequences[:, input_ids.shape[1]:]
    assert new.shape == (1, 8), new.shape
    step_logits = torch.stack(g.logits, dim=1).float()  # [1, 8, vocab]
    assert torch.equal(step_logits.argmax(-1), new)
    # Cross-check: step 0 logits == last position of the full forward (within fp noise).
    assert torch.allclose(step_logits[0, 0], res.logits[0, -1], atol=1e-5)
    # And the no-cache full forward of prompt+generated tokens gives the same greedy tokens.
    with torch.no_grad():
        full = model(input_ids=g.sequences, use_cache=False).logits
    assert torch.equal(full[0, 11:-1].argmax(-1), new[0])
    check_reload(type(model), out, res.logits, input_ids=input_ids)
    t["greedy_tokens"] = new
    t["greedy_logits"] = step_logits

    save_tensors(
        out / "expected.safetensors",
        t,
        {
            "generator": "scripts/make_fixtures.py",
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "prompt_a": prompt_a,
            "prompt_b1": PROMPT_B_TEXT,
            "seed": seed,
        },
    )


# ---------------------------------------------------------------------------------------
# Qwen2-Audio
# ---------------------------------------------------------------------------------------

AUDIO_VALID_FRAMES = 1234  # mel frames of real audio (the rest of the 3000 is padding)
AUDIO_PROMPT_TEXT = "What is it?"


def write_wav_f32(path: Path, samples: np.ndarray) -> None:
    """Mono 16 kHz IEEE-float WAV (format tag 3), byte-exact float32 samples."""
    import struct
    data = samples.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, 16000, 16000 * 4, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def audio_case(out_root: Path, seed: int) -> None:
    out = out_root / "tiny-qwen2-audio"
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(with_audio=True)
    save_tokenizer(tok, out, QWEN2_AUDIO_CHAT_TEMPLATE, with_audio=True)
    eos = tok.token_to_id("<|im_end|>")
    pad = tok.token_to_id("<|endoftext|>")
    audio_id = tok.token_to_id("<|AUDIO|>")

    text_config = dict(
        model_type="qwen2",
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_act="silu",
        max_position_embeddings=1024,  # the merged sequence is ~330 tokens
        initializer_range=WEIGHT_STD,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        use_sliding_window=False,
        bos_token_id=None,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    audio_config = dict(
        model_type="qwen2_audio_encoder",
        num_mel_bins=128,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=128,
        d_model=64,
        max_source_positions=1500,
        activation_function="gelu",
        scale_embedding=False,
        initializer_range=WEIGHT_STD,
    )
    config = Qwen2AudioConfig(
        audio_config=audio_config,
        text_config=text_config,
        audio_token_index=audio_id,
        attn_implementation="eager",
    )
    model = Qwen2AudioForConditionalGeneration(config)
    assert model.config._attn_implementation == "eager"
    assert model.model.audio_tower.config._attn_implementation == "eager"
    assert model.model.language_model.config._attn_implementation == "eager"
    randomize(model, seed)
    model.eval()
    model.generation_config = GenerationConfig(bos_token_id=None, eos_token_id=eos, pad_token_id=pad)
    save_model(model, out, rope_theta=10000.0)

    # ---- features: a deterministic synthetic waveform through WhisperFeatureExtractor ----
    fe = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=30, n_fft=400)
    fe.save_pretrained(str(out))
    rng = np.random.default_rng(seed)
    n_samples = AUDIO_VALID_FRAMES * 160  # -> exactly AUDIO_VALID_FRAMES valid mel frames
    tt = np.arange(n_samples, dtype=np.float64) / 16000.0
    wav = (
        0.3 * np.sin(2 * np.pi * 220.0 * tt)
        + 0.2 * np.sin(2 * np.pi * 1375.0 * tt) * (tt < 4.0)
        + 0.05 * rng.standard_normal(n_samples)
    ).astype(np.float32)
    feats = fe(
        wav,
        sampling_rate=16000,
        return_attention_mask=True,
        padding="max_length",
        return_tensors="pt",
    )
    # The waveform itself, so the Rust side can run file -> features -> logits end to end.
    write_wav_f32(out / "synthetic.wav", wav)
    input_features = feats["input_features"].float()  # [1, 128, 3000]
    feature_attention_mask = feats["attention_mask"].long()  # [1, 3000]
    assert input_features.shape == (1, 128, 3000)
    n_valid = int(feature_attention_mask.sum())
    assert n_valid == AUDIO_VALID_FRAMES, n_valid

    # ---- number of <|AUDIO|> tokens (Qwen2AudioProcessor._process_audio) ----
    num_audio_tokens = (((n_valid - 1) // 2 + 1) - 2) // 2 + 1
    _, out_len = model.model.audio_tower._get_feat_extract_output_lengths(torch.tensor([n_valid]))
    assert int(out_len) == num_audio_tokens

    hf_tok = PreTrainedTokenizerFast.from_pretrained(str(out))
    messages = [
        {"role": "user", "content": [{"type": "audio", "audio_url": "synthetic.wav"}, {"type": "text", "text": AUDIO_PROMPT_TEXT}]}
    ]
    prompt = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt.count("<|AUDIO|>") == 1
    expanded = prompt.replace("<|AUDIO|>", "<|AUDIO|>" * num_audio_tokens)
    ids = tok.encode(expanded).ids
    assert sum(1 for i in ids if i == audio_id) == num_audio_tokens
    assert max(ids) < VOCAB

    # Cross-check with the real processor when it can be built offline.
    try:
        from transformers import Qwen2AudioProcessor

        proc = Qwen2AudioProcessor(feature_extractor=fe, tokenizer=hf_tok, chat_template=QWEN2_AUDIO_CHAT_TEMPLATE)
        pin = proc(text=prompt, audio=[wav], sampling_rate=16000, return_tensors="pt")
        assert pin["input_ids"][0].tolist() == ids, "processor disagrees on input_ids"
        assert torch.equal(pin["input_features"].float(), input_features)
        assert torch.equal(pin["feature_attention_mask"].long(), feature_attention_mask)
        print("  Qwen2AudioProcessor cross-check: OK")
    except Exception as e:  # pragma: no cover - informative only
        print(f"  Qwen2AudioProcessor cross-check skipped/failed: {type(e).__name__}: {e}")
        raise

    input_ids = torch.tensor([ids], dtype=torch.long)
    attention_mask = torch.ones_like(input_ids)

    cap: dict = {}
    lm = model.model.language_model
    hs = register_capture(lm, cap, "")

    def tower_hook(_m, _inp, o):
        cap["audio_encoder_out"] = o.last_hidden_state.detach().clone()

    def proj_hook(_m, _inp, o):
        cap["audio_features_full"] = o.detach().clone()

    def lm_pre_hook(_m, args, kwargs):
        cap["inputs_embeds"] = kwargs["inputs_embeds"].detach().clone()

    hs.append(model.model.audio_tower.register_forward_hook(tower_hook))
    hs.append(model.model.multi_modal_projector.register_forward_hook(proj_hook))
    hs.append(lm.register_forward_pre_hook(lm_pre_hook, with_kwargs=True))
    with torch.no_grad():
        res = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            input_features=input_features,
            feature_attention_mask=feature_attention_mask,
            use_cache=False,
        )
    for h in hs:
        h.remove()

    enc = cap["audio_encoder_out"]  # [1, 750, 64]
    assert enc.shape == (1, 750, 64), enc.shape
    audio_features = cap["audio_features_full"][0, :num_audio_tokens]  # [N, 64]
    emb = cap["inputs_embeds"]
    mask = input_ids[0] == audio_id
    assert torch.equal(emb[0, mask], audio_features)
    assert torch.equal(emb[0, ~mask], cap["embeds"][0, ~mask])

    # Independent re-computation of the audio tower with a hand-written key mask
    # (documents the semantics: keys >= audio_feat_len are masked, queries are not).
    feat_len = (n_valid - 1) // 2 + 1
    with torch.no_grad():
        m4 = torch.zeros(1, 1, 1500, 1500)
        m4[..., feat_len:] = torch.finfo(torch.float32).min
        enc2 = model.model.audio_tower(input_features, attention_mask=m4).last_hidden_state
    assert torch.allclose(enc2, enc, atol=1e-6), (enc2 - enc).abs().max()

    check_reload(
        Qwen2AudioForConditionalGeneration,
        out,
        res.logits,
        input_ids=input_ids,
        attention_mask=attention_mask,
        input_features=input_features,
        feature_attention_mask=feature_attention_mask,
    )

    t = {
        "input_features": input_features,
        "feature_attention_mask": feature_attention_mask,
        "input_ids": input_ids,
        "audio_encoder_out": enc,
        "audio_features": audio_features,
        "inputs_embeds": emb,
    }
    for l in range(text_config["num_hidden_layers"]):
        t[f"resid_post.{l}"] = cap[f"resid_post.{l}"]
    t["final_norm"] = cap["final_norm"]
    t["logits"] = res.logits.float()
    save_tensors(
        out / "expected.safetensors",
        t,
        {
            "generator": "scripts/make_fixtures.py",
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "prompt": prompt,
            "num_audio_tokens": num_audio_tokens,
            "audio_token_index": audio_id,
            "valid_mel_frames": n_valid,
            "seed": seed,
        },
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.utils.logging.disable_progress_bar()
    out_root: Path = args.out
    out_root.mkdir(parents=True, exist_ok=True)
    for d in ("tiny-qwen2", "tiny-llama", "tiny-qwen2-audio"):
        if (out_root / d).exists():
            shutil.rmtree(out_root / d)
    print("tiny-qwen2"); text_case("qwen2", out_root, seed=1)
    # seed 5: the first seed >= 2 whose 8 greedy tokens are not (almost) all the same token
    print("tiny-llama"); text_case("llama", out_root, seed=5)
    print("tiny-qwen2-audio"); audio_case(out_root, seed=3)
    for p in sorted(out_root.rglob("*")):
        if p.is_file():
            print(f"  {p.relative_to(out_root)}  {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Reference fixtures for crates/earguard-audio (Whisper log-mel features).

What it does:

1. Speech clip. `crates/earguard-audio/tests/fixtures/sourdough_16k.wav` is a real
   speech clip: espeak-ng ("How do I bake sourdough bread?", voice en-us, 160 wpm),
   band-limited resampled from espeak-ng's 22050 Hz to 16 kHz (FFT resampling with
   numpy) and stored as mono 16-bit PCM. It is committed; it is only re-rendered
   when it is missing or `--render` is given (espeak-ng must then be installed).

2. HF features. The clip is read back exactly as the Rust side reads it
   (int16 / 32768) and fed to transformers' `WhisperFeatureExtractor` with
   feature_size 128 and 80, `return_attention_mask=True` (as Qwen2-Audio's
   processor does). Results go to `tests/fixtures/hf_mel.safetensors`:

     mel128        f32 [128, 3000]
     mel80         f32 [80, 3000]
     valid_frames  i64 [2]   attention-mask sums for (128, 80)
     samples_len   i64 [1]   number of 16 kHz samples in the clip

   The fixture is made with the extractor's numpy path (float64 STFT), so the
   result does not depend on whether torch is installed; when torch is present
   the torch path is also run and its distance to the numpy path is printed.

Needs: numpy, transformers, safetensors (no torch, no soundfile).
Usage: python3 scripts/make_audio_fixtures.py [--render]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "crates" / "earguard-audio" / "tests" / "fixtures"
WAV = FIXTURES / "sourdough_16k.wav"
OUT = FIXTURES / "hf_mel.safetensors"

TEXT = "How do I bake sourdough bread?"
VOICE = "en-us"
RATE_WPM = 160
SR = 16000


def read_wav_int16(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise SystemExit(f"{path}: expected 16-bit PCM, got {8 * w.getsampwidth()}-bit")
        rate = w.getframerate()
        channels = w.getnchannels()
        raw = w.readframes(w.getnframes())
    data = np.frombuffer(raw, dtype="<i2").astype(np.int16)
    if channels > 1:
        data = data.reshape(-1, channels).mean(axis=1).astype(np.int16)
    return data, rate


def fft_resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling of a whole clip in the frequency domain."""
    n_in = len(x)
    n_out = int(np.ceil(n_in * rate_out / rate_in))
    spec = np.fft.rfft(x.astype(np.float64))
    keep = min(len(spec), n_out // 2 + 1)
    out_spec = np.zeros(n_out // 2 + 1, dtype=np.complex128)
    out_spec[:keep] = spec[:keep]
    return np.fft.irfft(out_spec, n=n_out) * (n_out / n_in)


def render_wav(path: Path) -> None:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SystemExit("espeak-ng not found: install it (Debian/Ubuntu: apt-get install -y espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        raw_path = Path(tmp) / "espeak.wav"
        # Text goes through stdin, never through a shell.
        subprocess.run(
            [exe, "-v", VOICE, "-s", str(RATE_WPM), "-w", str(raw_path), "--stdin"],
            input=TEXT.encode("utf-8"),
            check=True,
        )
        pcm, rate = read_wav_int16(raw_path)
    y = fft_resample(pcm.astype(np.float64) / 32768.0, rate, SR)
    q = np.clip(np.round(y * 32768.0), -32768, 32767).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(q.tobytes())
    print(f"rendered {path} ({len(q)} samples, {len(q) / SR:.2f} s, from espeak-ng at {rate} Hz)")


def hf_features(audio: np.ndarray, n_mels: int) -> tuple[np.ndarray, int]:
    from transformers import WhisperFeatureExtractor
    from transformers.models.whisper import feature_extraction_whisper as few

    fe = WhisperFeatureExtractor(feature_size=n_mels)
    saved = few.is_torch_available
    few.is_torch_available = lambda: False  # force the numpy (float64 STFT) path
    try:
        out = fe(audio, sampling_rate=SR, return_attention_mask=True, return_tensors="np")
    finally:
        few.is_torch_available = saved
    feats = np.asarray(out["input_features"][0], dtype=np.float32)
    valid = int(np.asarray(out["attention_mask"][0]).sum())
    assert feats.shape == (n_mels, 3000), feats.shape

    if saved():
        torch_out = fe(audio, sampling_rate=SR, return_attention_mask=True, return_tensors="np")
        d = float(np.abs(np.asarray(torch_out["input_features"][0]) - feats).max())
        print(f"  n_mels={n_mels}: numpy vs torch path max abs diff {d:.3e}")
    return feats, valid


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--render", action="store_true", help="re-render the speech clip with espeak-ng")
    args = ap.parse_args()

    if args.render or not WAV.exists():
        render_wav(WAV)
    pcm, rate = read_wav_int16(WAV)
    if rate != SR:
        raise SystemExit(f"{WAV}: expected {SR} Hz, got {rate}")
    audio = pcm.astype(np.float32) / 32768.0

    from safetensors.numpy import save_file
    import transformers

    tensors = {"samples_len": np.array([len(audio)], dtype=np.int64)}
    valids = []
    for n_mels in (128, 80):
        feats, valid = hf_features(audio, n_mels)
        tensors[f"mel{n_mels}"] = np.ascontiguousarray(feats)
        valids.append(valid)
        print(f"  n_mels={n_mels}: valid_frames={valid} min={feats.min():.4f} max={feats.max():.4f}")
    tensors["valid_frames"] = np.array(valids, dtype=np.int64)
    meta = {
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "backend": "numpy",
        "source": WAV.name,
        "text": TEXT,
    }
    save_file(tensors, str(OUT), metadata=meta)
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

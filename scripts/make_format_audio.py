#!/usr/bin/env python3
"""Format-coverage fixtures for crates/earguard-audio (tests/fixtures/formats/).

Every file holds a known, short signal so the Rust tests can check the decoded content,
not only that decoding succeeds:

  tone440_16k_u8.wav      440 Hz sine, amplitude 0.5, 0.5 s, 16 kHz, 8-bit unsigned PCM
  tone440_16k_s16.wav     same, 16-bit PCM
  tone440_16k_s24.wav     same, 24-bit PCM
  tone440_16k_s32.wav     same, 32-bit PCM
  tone440_16k_f32.wav     same, 32-bit IEEE float (format tag 3)
  tone440_16k_s24x.wav    same, 24-bit PCM in a WAVE_FORMAT_EXTENSIBLE header
  tone440_16k_ulaw.wav    same, G.711 mu-law (format tag 7; hound cannot read it)
  tone440_16k_alaw.wav    same, G.711 A-law (format tag 6)
  stereo_16k_s16.wav      L = 0.5 sin(440) + 0.25 sin(1000), R = -0.5 sin(440) + 0.25 sin(1000):
                          the mono mix is exactly 0.25 sin(2 pi 1000 t)
  tone440_44k1_s16.wav    440 Hz, 22051 frames (0.5 s + 1) at 44.1 kHz  -> ceil(22051*16000/44100) = 8001
  tone1000_8k_s16.wav     1000 Hz, 4001 frames at 8 kHz                -> 8002 samples
  tone440_16k.flac        440 Hz, 16 kHz, 16-bit FLAC (lossless: same samples as the s16 WAV)
  stereo_16k.flac         the stereo signal above as 16-bit FLAC
  tone440_44k1.mp3        440 Hz, 0.5 s at 44.1 kHz, MPEG-1 layer III
  tone440_16k.ogg         440 Hz, 0.5 s at 16 kHz, Ogg/Vorbis

The WAV files are written by hand here (struct), independently of the Rust side's WAV
reader; FLAC, MP3, Ogg/Vorbis and G.711 use libsndfile through the `soundfile` package.

Needs: numpy, soundfile (pip install numpy soundfile).
Usage: python3 scripts/make_format_audio.py
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates" / "earguard-audio" / "tests" / "fixtures" / "formats"

AMP = 0.5


def tone(freq: float, rate: int, frames: int, amp: float = AMP) -> np.ndarray:
    t = np.arange(frames, dtype=np.float64) / rate
    return amp * np.sin(2.0 * np.pi * freq * t)


def quantize(x: np.ndarray, bits: int) -> np.ndarray:
    scale = float(1 << (bits - 1))
    return np.clip(np.round(x * scale), -scale, scale - 1).astype(np.int64)


def pcm_bytes(x: np.ndarray, bits: int) -> bytes:
    """Interleaved samples in [-1, 1) as little-endian PCM of `bits` bits."""
    q = quantize(x, bits)
    if bits == 8:
        return (q + 128).astype(np.uint8).tobytes()
    if bits == 16:
        return q.astype("<i2").tobytes()
    if bits == 24:
        u = (q & 0xFFFFFF).astype("<u4").tobytes()
        return b"".join(u[i : i + 3] for i in range(0, len(u), 4))
    if bits == 32:
        return q.astype("<i4").tobytes()
    raise ValueError(bits)


def wav(path: Path, data: bytes, *, tag: int, channels: int, rate: int, bits: int, extensible: bool = False) -> None:
    block = channels * bits // 8
    if extensible:
        sub_format = struct.pack("<HHI8s", tag, 0x0000, 0x00100000, bytes.fromhex("800000aa00389b71"))
        fmt = struct.pack("<HHIIHHHHI", 0xFFFE, channels, rate, rate * block, block, bits, 22, bits, 0) + sub_format
    else:
        fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt
    chunks += b"data" + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks)


def interleave(*chans: np.ndarray) -> np.ndarray:
    return np.stack(chans, axis=1).reshape(-1)


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    sr = 16000
    x = tone(440.0, sr, sr // 2)

    for bits, name in ((8, "u8"), (16, "s16"), (24, "s24"), (32, "s32")):
        wav(OUT / f"tone440_16k_{name}.wav", pcm_bytes(x, bits), tag=1, channels=1, rate=sr, bits=bits)
    wav(OUT / "tone440_16k_f32.wav", x.astype("<f4").tobytes(), tag=3, channels=1, rate=sr, bits=32)
    wav(OUT / "tone440_16k_s24x.wav", pcm_bytes(x, 24), tag=1, channels=1, rate=sr, bits=24, extensible=True)
    sf.write(OUT / "tone440_16k_ulaw.wav", x, sr, format="WAV", subtype="ULAW")
    sf.write(OUT / "tone440_16k_alaw.wav", x, sr, format="WAV", subtype="ALAW")

    common = tone(1000.0, sr, sr // 2, 0.25)
    left = tone(440.0, sr, sr // 2) + common
    right = -tone(440.0, sr, sr // 2) + common
    wav(OUT / "stereo_16k_s16.wav", pcm_bytes(interleave(left, right), 16), tag=1, channels=2, rate=sr, bits=16)

    wav(OUT / "tone440_44k1_s16.wav", pcm_bytes(tone(440.0, 44100, 22051), 16), tag=1, channels=1, rate=44100, bits=16)
    wav(OUT / "tone1000_8k_s16.wav", pcm_bytes(tone(1000.0, 8000, 4001), 16), tag=1, channels=1, rate=8000, bits=16)

    sf.write(OUT / "tone440_16k.flac", quantize(x, 16).astype(np.int16), sr, format="FLAC", subtype="PCM_16")
    stereo = np.stack([quantize(left, 16), quantize(right, 16)], axis=1).astype(np.int16)
    sf.write(OUT / "stereo_16k.flac", stereo, sr, format="FLAC", subtype="PCM_16")
    sf.write(OUT / "tone440_44k1.mp3", tone(440.0, 44100, 22050), 44100, format="MP3", subtype="MPEG_LAYER_III")
    sf.write(OUT / "tone440_16k.ogg", x, sr, format="OGG", subtype="VORBIS")

    for p in sorted(OUT.iterdir()):
        print(f"{p.relative_to(ROOT)}: {p.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())

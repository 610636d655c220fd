#!/usr/bin/env python3
"""Bad-input corpus for crates/earguard-audio (tests/fixtures/bad/).

Each file is small and broken (or merely unacceptable) in one specific way; the Rust test
`tests/bad_input.rs` runs every one through `load_audio` and checks the error variant:

  empty.wav                 0 bytes                                          -> EmptyFile
  riff_only.wav             the 4 bytes "RIFF" and a size, nothing else      -> BadHeader
  truncated_header.wav      the first 30 of 44 header bytes of a valid WAV   -> BadHeader
  no_fmt_chunk.wav          RIFF/WAVE with a data chunk but no fmt chunk     -> BadHeader
  truncated_data.wav        header declares 1 s of samples, 0.1 s present    -> Corrupt
  text.wav                  a text file named .wav                           -> NotAudio
  random.mp3                4 KiB of seeded random bytes named .mp3          -> NotAudio
  avi_riff.wav              a RIFF container of type AVI                     -> NotAudio
  nan_float.wav             32-bit float WAV with a NaN at sample 1000       -> NonFinite
  inf_float.wav             32-bit float stereo WAV, +inf at frame 7, ch. 1  -> NonFinite
  zero_length.wav           valid 16-bit PCM header, empty data chunk        -> ZeroLength
  zero_rate.wav             16-bit PCM header with sample rate 0             -> InvalidFormat
  ima_adpcm.wav             IMA ADPCM WAV (format tag 0x0011)                -> UnsupportedCodec
  gsm610.wav                GSM 6.10 WAV (format tag 0x0031)                 -> UnsupportedCodec
  opus.ogg                  a valid Ogg container holding Opus (not Vorbis)  -> UnsupportedCodec
  too_long_31s.wav          31 s of a 200 Hz tone, 4 kHz 8-bit PCM (124 KB)  -> TooLong
  too_long_31s.flac         1 s of 250 Hz, 30 s of silence, 16 kHz FLAC       -> TooLong
  truncated.flac            a 2 s FLAC cut to its first 40 %                 -> Corrupt
  flac_header_only.flac     the first 20 bytes of a FLAC file                -> BadHeader
  truncated.mp3             a 2 s MP3 cut to its first 40 %                  -> Corrupt
  truncated.ogg             a 3 s Ogg/Vorbis cut to its first 70 %           -> BadHeader
  id3_garbage.mp3           an ID3v2 tag followed by random bytes            -> NotAudio/Corrupt/BadHeader

(The exact expectations live in the Rust test.) The over-long files must still load as
exactly 30 s when `LoadOptions::truncate` is set.

WAV files are written by hand (struct). FLAC, MP3, Opus and the ADPCM/GSM WAVs use
libsndfile through the `soundfile` package.

Needs: numpy, soundfile (pip install numpy soundfile).
Usage: python3 scripts/make_bad_audio.py
"""

from __future__ import annotations

import io
import struct
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates" / "earguard-audio" / "tests" / "fixtures" / "bad"


def wav(*, tag: int, channels: int, rate: int, bits: int, data: bytes, declared_data_len: int | None = None) -> bytes:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    n = len(data) if declared_data_len is None else declared_data_len
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", n) + data
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def tone(freq: float, rate: int, frames: int, amp: float = 0.5) -> np.ndarray:
    return amp * np.sin(2.0 * np.pi * freq * np.arange(frames, dtype=np.float64) / rate)


def s16(x: np.ndarray) -> bytes:
    return np.clip(np.round(x * 32768), -32768, 32767).astype("<i2").tobytes()


def encoded(x: np.ndarray, rate: int, fmt: str, subtype: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20240601)
    files: dict[str, bytes] = {}

    good = wav(tag=1, channels=1, rate=16000, bits=16, data=s16(tone(440, 16000, 1600)))
    files["empty.wav"] = b""
    files["riff_only.wav"] = b"RIFF" + struct.pack("<I", 36)
    files["truncated_header.wav"] = good[:30]
    data = s16(tone(440, 16000, 160))
    files["no_fmt_chunk.wav"] = b"RIFF" + struct.pack("<I", 4 + 8 + len(data)) + b"WAVE" + b"data" + struct.pack("<I", len(data)) + data
    files["truncated_data.wav"] = wav(
        tag=1, channels=1, rate=16000, bits=16, data=s16(tone(440, 16000, 1600)), declared_data_len=2 * 16000
    )
    files["text.wav"] = b"This is a text file, not audio.\nIt only has a .wav name.\n"
    files["random.mp3"] = bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tolist()).replace(b"\xff", b"\x00")
    avi = b"LIST" + struct.pack("<I", 4) + b"hdrl"
    files["avi_riff.wav"] = b"RIFF" + struct.pack("<I", 4 + len(avi)) + b"AVI " + avi

    x = tone(440, 16000, 1600).astype("<f4")
    x[1000] = np.nan
    files["nan_float.wav"] = wav(tag=3, channels=1, rate=16000, bits=32, data=x.tobytes())
    st = np.zeros((16, 2), dtype="<f4")
    st[:, 0] = 0.25
    st[7, 1] = np.inf
    files["inf_float.wav"] = wav(tag=3, channels=2, rate=16000, bits=32, data=st.tobytes())
    files["zero_length.wav"] = wav(tag=1, channels=1, rate=16000, bits=16, data=b"")
    files["zero_rate.wav"] = wav(tag=1, channels=1, rate=0, bits=16, data=s16(tone(440, 16000, 160)))

    speech_like = tone(440, 16000, 4000) + tone(1250, 16000, 4000, 0.2)
    files["ima_adpcm.wav"] = encoded(speech_like, 16000, "WAV", "IMA_ADPCM")
    files["gsm610.wav"] = encoded(tone(440, 8000, 1600), 8000, "WAV", "GSM610")
    files["opus.ogg"] = encoded(tone(440, 48000, 4800), 48000, "OGG", "OPUS")

    # 31 s, larger than one 30 s window, kept small: 4 kHz, 8-bit unsigned PCM.
    long_x = tone(200, 4000, 31 * 4000)
    files["too_long_31s.wav"] = wav(
        tag=1, channels=1, rate=4000, bits=8, data=(np.round(long_x * 127) + 128).astype(np.uint8).tobytes()
    )
    # 1 s of tone, then 30 s of digital silence (which FLAC stores in a few bytes a block).
    long_flac = np.zeros(31 * 16000)
    long_flac[:16000] = tone(250, 16000, 16000)
    files["too_long_31s.flac"] = encoded(long_flac, 16000, "FLAC", "PCM_16")

    two_s = tone(440, 16000, 32000) + tone(660, 16000, 32000, 0.2)
    flac = encoded(two_s, 16000, "FLAC", "PCM_16")
    files["truncated.flac"] = flac[: int(len(flac) * 0.4)]
    files["flac_header_only.flac"] = flac[:20]
    mp3 = encoded(two_s, 16000, "MP3", "MPEG_LAYER_III")
    files["truncated.mp3"] = mp3[: int(len(mp3) * 0.4)]
    # symphonia scans for the last Ogg page when it opens the file, so a cut shows there.
    ogg = encoded(tone(440, 16000, 48000), 16000, "OGG", "VORBIS")
    files["truncated.ogg"] = ogg[: int(len(ogg) * 0.7)]
    id3 = b"ID3\x03\x00\x00" + bytes([0, 0, 0, 10]) + b"\x00" * 10
    files["id3_garbage.mp3"] = id3 + bytes(rng.integers(0, 256, 2048, dtype=np.uint8).tolist()).replace(b"\xff", b"\x00")

    for name, content in files.items():
        (OUT / name).write_bytes(content)
        print(f"{(OUT / name).relative_to(ROOT)}: {len(content)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Golden llama.cpp control-vector fixtures for earguard-steer, written by llama.cpp's own
Python package `gguf`.

Pinned: gguf==0.19.0 (with numpy 2.4.6). Set up and run:

    python3 -m venv /tmp/ggufenv && /tmp/ggufenv/bin/pip install gguf==0.19.0
    /tmp/ggufenv/bin/python scripts/make_controlvector_fixture.py

It writes crates/earguard-steer/tests/fixtures/llamacpp/:

- qwen2_h8_l4.gguf     the golden file: general.architecture = "controlvector",
                       controlvector.model_hint = "qwen2", controlvector.layer_count = 4 (u32),
                       F32 tensors direction.1 .. direction.3 of 8 values each, with
                       direction.N[i] = (-1)**i * (N + i / 8)   (exact in f32)
- bad_nan.gguf         direction.2[3] is NaN
- bad_f16.gguf         direction.1 stored as F16
- bad_zero_layer.gguf  a tensor direction.0 (llama.cpp rejects index 0)
- bad_arch.gguf        general.architecture = "qwen2" (a model-like file)
- bad_lengths.gguf     direction.1 has 8 values, direction.2 has 6
- bad_2d.gguf          direction.1 has shape [2, 4]

The Rust tests (crates/earguard-steer/tests/artifact_llamacpp.rs) check the same formula.

Checking that Python reads what earguard exports (done once during development; CI does not
need Python):

    cargo test -p earguard-steer --release --test artifact_llamacpp -- --ignored --nocapture \
        write_export_for_python_check
    /tmp/ggufenv/bin/python scripts/make_controlvector_fixture.py --check \
        target/tmp/earguard_export_check.gguf

`--check PATH` reads PATH with gguf.GGUFReader and asserts the golden contents (architecture,
hint, layer_count 4, direction.1..3 with the values above).
"""

import argparse
import os
import sys

import numpy as np
import gguf

HIDDEN = 8
LAYER_COUNT = 4
LAYERS = (1, 2, 3)
OUT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "..", "crates", "earguard-steer", "tests", "fixtures", "llamacpp",
)


def direction(n, hidden=HIDDEN):
    i = np.arange(hidden, dtype=np.float32)
    sign = np.where(np.arange(hidden) % 2 == 0, 1.0, -1.0).astype(np.float32)
    return (sign * (n + i / 8.0)).astype(np.float32)


def write(name, tensors, arch="controlvector", hint="qwen2", layer_count=LAYER_COUNT):
    path = os.path.join(OUT, name)
    w = gguf.GGUFWriter(path, arch)
    w.add_string("controlvector.model_hint", hint)
    w.add_uint32("controlvector.layer_count", layer_count)
    for tname, values in tensors:
        w.add_tensor(tname, values)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print("wrote", os.path.normpath(path))


def make():
    os.makedirs(OUT, exist_ok=True)
    golden = [(f"direction.{n}", direction(n)) for n in LAYERS]
    write("qwen2_h8_l4.gguf", golden)

    nan = [(n, v.copy()) for n, v in golden]
    nan[1][1][3] = np.nan
    write("bad_nan.gguf", nan)

    write("bad_f16.gguf", [("direction.1", direction(1).astype(np.float16))])
    write("bad_zero_layer.gguf", [("direction.0", direction(0)), ("direction.1", direction(1))])
    write("bad_arch.gguf", [("direction.1", direction(1))], arch="qwen2")
    write("bad_lengths.gguf", [("direction.1", direction(1)), ("direction.2", direction(2, 6))])
    write("bad_2d.gguf", [("direction.1", direction(1).reshape(2, 4))])


def field_value(reader, key):
    f = reader.fields[key]
    return f.contents() if hasattr(f, "contents") else f.parts[f.data[0]]


def check(path):
    r = gguf.GGUFReader(path)
    assert field_value(r, "general.architecture") == "controlvector", "architecture"
    assert field_value(r, "controlvector.model_hint") == "qwen2", "model_hint"
    assert int(field_value(r, "controlvector.layer_count")) == LAYER_COUNT, "layer_count"
    tensors = {t.name: t for t in r.tensors}
    assert sorted(tensors) == [f"direction.{n}" for n in LAYERS], sorted(tensors)
    for n in LAYERS:
        t = tensors[f"direction.{n}"]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32, t.tensor_type
        assert list(t.shape) == [HIDDEN], t.shape
        assert np.array_equal(np.asarray(t.data), direction(n)), (n, t.data)
    keys = sorted(k for k in r.fields if not k.startswith("GGUF."))
    print(f"ok: {path} read by gguf {getattr(gguf, '__version__', '?')}: keys {keys}, "
          f"tensors {sorted(tensors)}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", metavar="PATH", help="verify a file instead of writing fixtures")
    args = ap.parse_args()
    if args.check:
        check(args.check)
    else:
        make()
    sys.exit(0)

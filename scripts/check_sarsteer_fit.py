#!/usr/bin/env python3
"""Independent check of a SARSteer fit (numpy SVD) against earguard's vector, from the
activations the fit cached: `earguard fit sarsteer ... -o VEC` leaves VEC.captures/{harmful,
harmful+suffix,benign}/activations.safetensors ([n, layers, hidden]).

Prints, per layer: max |numpy − earguard|, the share of ‖D‖² that the benign top-k subspace
holds (what λ-ablation removes), and, with --refusal RD_VEC, the cosine of D and of v with the
refusal direction. Needs numpy and safetensors (PyPI).

usage: scripts/check_sarsteer_fit.py VEC [--k 10] [--lambda 1] [--refusal RD_VEC]
"""
import argparse
import sys

import numpy as np
from safetensors.numpy import load_file


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("vec")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--lambda", dest="lam", type=float, default=1.0)
    ap.add_argument("--refusal")
    a = ap.parse_args()
    caps = a.vec.rstrip("/") + ".captures/"
    acts = lambda name: load_file(f"{caps}{name}/activations.safetensors")["acts"].astype(np.float64)
    plain, suffix, benign = acts("harmful"), acts("harmful+suffix"), acts("benign")
    ours = load_file(f"{a.vec}/vectors.safetensors")
    rd = load_file(f"{a.refusal}/vectors.safetensors") if a.refusal else None
    worst = 0.0
    for l in range(plain.shape[1]):
        d = (suffix[:, l] - plain[:, l]).mean(0)
        centred = benign[:, l] - benign[:, l].mean(0)
        u = np.linalg.svd(centred, full_matrices=False)[2][: a.k].T  # [hidden, k]
        proj = u @ (u.T @ d)
        v = d - a.lam * proj
        diff = np.abs(v - ours[f"direction.{l}"]).max()
        worst = max(worst, diff / max(np.abs(v).max(), 1e-12))
        line = f"layer {l:2d}  max|Δ| {diff:.2e}  benign-subspace share of |D|² {np.sum(proj**2) / np.sum(d**2):.2f}"
        if rd is not None:
            r = rd[f"direction.{l}"] / np.linalg.norm(rd[f"direction.{l}"])
            line += f"  cos(D,r) {d @ r / np.linalg.norm(d):+.2f}  cos(v,r) {v @ r / np.linalg.norm(v):+.2f}"
        print(line)
    print(f"worst relative difference {worst:.2e}")
    return 0 if worst < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())

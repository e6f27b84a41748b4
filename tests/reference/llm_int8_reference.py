"""LLM.int8() reference (Dettmers et al. 2022; bitsandbytes' Linear8bitLt with a threshold), a
NumPy transcription of the semantics kotoba implements (ops/quant_matmul.cpp), in float64 except
where the quantisation itself is defined in float32:
 - weights: int8 row-wise absmax, codes round(w * (127 / absmax_row)) (f32, half to even);
 - outlier columns: the input features j where some row has |x[:, j]| > threshold (none when
   the threshold is 0);
 - the other columns of each row of x: absmax over them, codes round(x * (127 / absmax)) (f32);
 - out = (codes_x @ codes_w^T, exact in int64) * (absmax_x / 127) * (absmax_w / 127)
         + x[:, outliers] @ (codes_w[:, outliers] * absmax_w / 127)^T.
Cases: outlier columns none / some / all, and threshold 0 with outliers present; 1, 5 and 40 rows;
an input width with a half-vector tail (160 = 2 * 64 + 32).

Writes <out>/llm_int8/reference.safetensors."""
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

K, N = 160, 37


def quantise_rows(v):
    """f32 rows -> (int codes, f32 absmax), bitsandbytes' row-wise int8 in float32."""
    v = v.astype(np.float32)
    absmax = np.abs(v).max(axis=1).astype(np.float32)
    to_code = np.where(absmax != 0, np.float32(127) / np.where(absmax != 0, absmax, np.float32(1)), np.float32(0))
    codes = np.rint(v * to_code.astype(np.float32)[:, None]).astype(np.int64)  # rint: half to even
    return codes, absmax


def llm_int8(x, w_codes, w_absmax, threshold):
    x = x.astype(np.float32)
    outlier = np.zeros(x.shape[1], dtype=bool)
    if threshold > 0:
        outlier = (np.abs(x) > np.float32(threshold)).any(axis=0)
    inlier = np.where(outlier[None, :], np.float32(0), x)
    x_codes, x_absmax = quantise_rows(inlier)
    acc = x_codes @ w_codes.T  # int64, exact
    scale = (x_absmax.astype(np.float64) / 127)[:, None] * (w_absmax.astype(np.float64) / 127)[None, :]
    main = acc.astype(np.float64) * scale
    w_deq = w_codes[:, outlier].astype(np.float64) * (w_absmax.astype(np.float64) / 127)[:, None]
    xo = x[:, outlier].astype(np.float64)
    side = xo @ w_deq.T
    # The magnitude a float32 computation of each output is accurate relative to.
    mag = np.abs(main) + np.abs(xo) @ np.abs(w_deq).T
    return main + side, mag, int(outlier.sum())


def main():
    out = os.path.join(sys.argv[1], "llm_int8")
    os.makedirs(out, exist_ok=True)
    seed = int(os.environ.get("KOTOBA_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    print(f"llm_int8_reference: seed {seed} (set KOTOBA_TEST_SEED={seed} to reproduce)")
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((N, K)) * 0.1).astype(np.float32)
    w_codes, w_absmax = quantise_rows(w)
    t = {"w": torch.from_numpy(w), "w_codes": torch.from_numpy(w_codes.astype(np.int32)),
         "w_absmax": torch.from_numpy(w_absmax)}
    for rows in (1, 5, 40):
        base = rng.standard_normal((rows, K)).astype(np.float32)
        none = np.clip(base, -5.5, 5.5)
        some = none.copy()
        cols = rng.choice(K, size=5, replace=False)
        for j in cols:  # one row (or more) of each outlier column far past the threshold
            r = rng.integers(0, rows, size=max(1, rows // 4))
            some[r, j] = rng.choice([-1, 1], size=r.size) * rng.uniform(6.5, 40, size=r.size)
        all_ = base * 3
        all_[0] = np.sign(base[0] + 1e-9) * (6.5 + np.abs(base[0]) * 5)  # every column an outlier
        cases = {"none": (none, 6.0), "some": (some, 6.0), "all": (all_, 6.0), "zero": (some, 0.0)}
        for name, (x, threshold) in cases.items():
            want, mag, outliers = llm_int8(x, w_codes, w_absmax, threshold)
            expect = {"none": 0, "all": K, "zero": 0}.get(name)
            assert expect is None or outliers == expect, (name, rows, outliers)
            assert name != "some" or 0 < outliers < K, (rows, outliers)
            key = f"{name}_r{rows}"
            t[key + "_x"] = torch.from_numpy(x.astype(np.float32))
            t[key + "_out"] = torch.from_numpy(want)
            t[key + "_mag"] = torch.from_numpy(mag)
            t[key + "_threshold"] = torch.tensor([threshold], dtype=torch.float32)
            t[key + "_outliers"] = torch.tensor([outliers], dtype=torch.int32)
    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(out, "reference.safetensors"))


if __name__ == "__main__":
    main()

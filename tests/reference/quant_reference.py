"""Quantisation references.

NF4 and 8-bit blockwise (bitsandbytes semantics, which bitsandbytes itself cannot supply here: it
needs a newer torch than Debian's): a torch/NumPy transcription of its definitions —
 - the NF4 code book and the dynamic 8-bit map (create_dynamic_map(signed=True): for exponents
   10^-6..10^0, the midpoints of torch.linspace(0.1, 1, 2^i + 1), both signs, then 0 and 1);
 - blockwise absmax, codes = the nearest code value to x / absmax (argmin, ties to the lower),
   NF4 packed two per byte with the first element in the high nibble;
 - double quantisation: offset = absmax.mean(), (absmax - offset) quantised 8-bit blockwise
   (block 256) with the dynamic map; dequantised absmax = code[q] * absmax2 + offset;
 - int8 row-wise: round(x * (127 / absmax_row)) (half to even), dequantised q * absmax / 127.
Q4_0 and Q8_0 come from llama.cpp's own Python package (gguf.quants), bit for bit.

Writes <out>/quant/reference.safetensors."""
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

import gguf
from gguf import quants

NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
       0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
       0.7229568362236023, 1.0]


def dynamic_map():
    data = []
    for i in range(7):
        bounds = torch.linspace(0.1, 1, 2 ** i + 1)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        data += (10 ** (-6 + i) * means).tolist()
        data += (-(10 ** (-6 + i)) * means).tolist()
    data += [0.0, 1.0]
    assert len(data) == 256
    return torch.tensor(sorted(data), dtype=torch.float32)


def nearest(scaled, code):
    return torch.argmin((scaled.reshape(-1, 1) - code.reshape(1, -1)).abs(), dim=1)


def blockwise(x, blocksize, code):
    n = x.numel()
    blocks = (n + blocksize - 1) // blocksize
    padded = torch.zeros(blocks * blocksize, dtype=torch.float32)
    padded[:n] = x
    absmax = padded.reshape(blocks, blocksize).abs().max(dim=1).values
    safe = torch.where(absmax == 0, torch.ones_like(absmax), absmax)
    scaled = (padded.reshape(blocks, blocksize) / safe.unsqueeze(1)).reshape(-1)[:n]
    return nearest(scaled, code).to(torch.uint8), absmax


def main():
    out = os.path.join(sys.argv[1], "quant")
    os.makedirs(out, exist_ok=True)
    seed = int(os.environ.get("KOTOBA_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    print(f"quant_reference: seed {seed} (set KOTOBA_TEST_SEED={seed} to reproduce)")
    g = torch.Generator().manual_seed(seed)
    t = {}
    dyn = dynamic_map()
    nf4 = torch.tensor(NF4, dtype=torch.float32)
    t["dynamic_code"] = dyn

    # NF4 with double quantisation, on a tensor with a partial last block and > 256 blocks.
    n = 64 * 300 + 38
    x = torch.randn(n, generator=g) * 0.05
    x[torch.randint(0, n, (20,), generator=g)] *= 40  # outliers, as trained weights have
    codes, absmax = blockwise(x, 64, nf4)
    if n % 2:
        codes = torch.cat([codes, torch.zeros(1, dtype=torch.uint8)])
    packed = (codes[0::2] << 4) | codes[1::2]
    offset = absmax.mean()
    qabsmax, absmax2 = blockwise(absmax - offset, 256, dyn)
    scales = dyn[qabsmax.long()] * absmax2.repeat_interleave(256)[: absmax.numel()] + offset
    dq = nf4[codes[:n].long()] * scales.repeat_interleave(64)[:n]
    dq_plain = nf4[codes[:n].long()] * absmax.repeat_interleave(64)[:n]
    t.update(nf4_x=x, nf4_packed=packed, nf4_absmax=absmax, nf4_offset=offset.reshape(1), nf4_qabsmax=qabsmax,
             nf4_absmax2=absmax2, nf4_dequant=dq, nf4_dequant_plain=dq_plain)

    # int8 row-wise.
    w = torch.randn(37, 70, generator=g)
    row_absmax = w.abs().max(dim=1).values
    q8 = torch.round(w * (127.0 / row_absmax.unsqueeze(1))).to(torch.int8)
    t.update(int8_x=w, int8_codes=q8, int8_absmax=row_absmax,
             int8_dequant=(q8.float() * row_absmax.unsqueeze(1)) * 7.874015718698502e-3)

    # ggml blocks, from llama.cpp's Python package.
    gx = (torch.randn(8, 96, generator=g) * torch.rand(8, 1, generator=g)).numpy().astype(np.float32)
    for name, kind in (("q4_0", gguf.GGMLQuantizationType.Q4_0), ("q8_0", gguf.GGMLQuantizationType.Q8_0)):
        qb = quants.quantize(gx, kind)
        t[f"{name}_bytes"] = torch.from_numpy(np.ascontiguousarray(qb).reshape(-1).copy())
        t[f"{name}_dequant"] = torch.from_numpy(quants.dequantize(qb, kind).astype(np.float32).reshape(-1).copy())
    t["ggml_x"] = torch.from_numpy(gx.reshape(-1).copy())

    # kotoba's safetensors reader has no U8: bytes travel widened to I32.
    t = {k: (v.to(torch.int32) if v.dtype == torch.uint8 else v).contiguous() for k, v in t.items()}
    save_file(t, os.path.join(out, "reference.safetensors"))


if __name__ == "__main__":
    main()

"""Run fla 0.4.0's chunk_gated_delta_rule forward + backward (and prepare_wy_repr_bwd alone) on
CUDA with seeded bf16 inputs; save the results for test_fla_patch_gpu.py to compare.

    python3 tests/gpu/fla_worker.py --root DIR --out FILE.pt --expect unpatched|patched

DIR is the directory that holds fla/ and must be the one imported (PYTHONPATH is set by the
caller; this checks). Prints one JSON line.
"""
import argparse
import json
import os
import sys
import time

MARKER = "slimeflow: sm100 fusion barrier"
UNPATCHED_LINE = "b_dk += tl.dot(tl.trans(b_dA), b_kb)"
B, T, H, K, V = 2, 1024, 4, 128, 128


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--expect", choices=("patched", "unpatched"), required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda")  # "cpu" with TRITON_INTERPRET=1: a dry-run
    ap.add_argument("--shape", default="%d,%d,%d,%d,%d" % (B, T, H, K, V), help="B,T,H,K,V")
    a = ap.parse_args()
    sys.path.insert(0, a.root)

    import torch
    import torch.nn.functional as F
    t0 = time.time()
    import fla
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    import fla.ops.gated_delta_rule.wy_fast as wy
    from fla.ops.utils import chunk_local_cumsum
    wy_file = os.path.realpath(wy.__file__)
    assert wy_file.startswith(os.path.realpath(a.root) + os.sep), (wy_file, a.root)
    src = open(wy_file).read()
    state = "patched" if MARKER in src else (
        "unpatched" if any(l.strip() == UNPATCHED_LINE for l in src.splitlines()) else "absent")
    assert state == a.expect, (state, a.expect, wy_file)

    b_, t_, h_, k_, v_ = [int(x) for x in a.shape.split(",")]
    dev, bf = a.device, torch.bfloat16
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    gen = torch.Generator(device=dev)
    gen.manual_seed(a.seed)

    def randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=gen, device=dev, dtype=dtype)

    # --- the whole op: forward and backward
    q = F.normalize(randn(b_, t_, h_, k_), p=2, dim=-1).to(bf).requires_grad_()
    k = F.normalize(randn(b_, t_, h_, k_), p=2, dim=-1).to(bf).requires_grad_()
    v = randn(b_, t_, h_, v_).to(bf).requires_grad_()
    g = F.logsigmoid(randn(b_, t_, h_)).to(bf).requires_grad_()
    beta = torch.sigmoid(randn(b_, t_, h_)).to(bf).requires_grad_()
    do = randn(b_, t_, h_, v_).to(bf)
    t1 = time.time()
    o, _ = chunk_gated_delta_rule(q, k, v, g, beta, output_final_state=False)
    (o.float() * do.float()).sum().backward()
    sync()
    t_first = time.time() - t1
    res = {"o": o, "dq": q.grad, "dk": k.grad, "dv": v.grad, "dg": g.grad, "dbeta": beta.grad}

    # --- prepare_wy_repr_bwd_kernel alone (the kernel the patch rewrites)
    kk = F.normalize(randn(b_, t_, h_, k_), p=2, dim=-1).to(bf)
    vv = randn(b_, t_, h_, v_).to(bf)
    bb = torch.sigmoid(randn(b_, t_, h_)).to(bf)
    gg = chunk_local_cumsum(F.logsigmoid(randn(b_, t_, h_)), chunk_size=64)
    AA = (0.1 * randn(b_, t_, h_, 64)).to(bf)
    dw = randn(b_, t_, h_, k_).to(bf)
    du = randn(b_, t_, h_, v_).to(bf)
    dk2, dv2, db2, dg2 = wy.prepare_wy_repr_bwd(k=kk, v=vv, beta=bb, A=AA, dw=dw, du=du, g=gg)
    sync()
    res.update({"wy_dk": dk2, "wy_dv": dv2, "wy_db": db2, "wy_dg": dg2})

    finite = {n: bool(torch.isfinite(t.float()).all().item()) for n, t in res.items()}
    torch.save({n: t.detach().float().cpu() for n, t in res.items()}, a.out)
    print(json.dumps({"ok": all(finite.values()), "state": state, "wy_fast": wy_file,
                      "fla_version": getattr(fla, "__version__", None),
                      "torch": torch.__version__, "device": torch.cuda.get_device_name(0) if dev == "cuda" else dev,
                      "capability": list(torch.cuda.get_device_capability(0))
                      if dev == "cuda" else None, "shape": [b_, t_, h_, k_, v_],
                      "finite": finite, "first_call_s": round(t_first, 2),
                      "total_s": round(time.time() - t0, 2)}))


if __name__ == "__main__":
    main()

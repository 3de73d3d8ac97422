"""A load for the telemetry test on a real GPU: `python3 gpu_load.py compute|spin SECONDS`.

compute: back-to-back bf16 matmuls (busy and power-hungry, as training is).
spin:    torch.cuda._sleep kernels, which busy-wait on the SM clock: the GPU reads 100 %
         utilization while doing no arithmetic, as a kernel spinning in an NCCL wait loop does.
Prints "ready" once the load runs, then sleeps with its CUDA context held when the time is up
("idle"), until killed.
"""
import sys
import time

import torch

mode, seconds = sys.argv[1], float(sys.argv[2])
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
print("ready", flush=True)
end = time.time() + seconds
while time.time() < end:
    if mode == "compute":
        for _ in range(20):
            a = (a @ b).clamp_(-1, 1)
    else:
        torch.cuda._sleep(200_000_000)  # ~0.1 s of spinning at ~2 GHz
    torch.cuda.synchronize()
print("idle", flush=True)
time.sleep(3600)

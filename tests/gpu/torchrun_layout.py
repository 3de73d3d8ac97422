"""Worker for test_torchrun_layout_gpu.py, launched by `torchrun --nproc-per-node N`.

Each rank initialises torch.distributed over NCCL, binds to GPU LOCAL_RANK, and reports what it
sees; rank 0 gathers every rank's view and prints one JSON line. This is the process layout the
converter (torchrun --nproc-per-node 8) and the 1x8 recipe depend on.
"""
import json
import os

import torch
import torch.distributed as dist


def main():
    local = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local)
    dist.init_process_group("nccl")
    dev = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(dev)
    mine = {"rank": dist.get_rank(), "local_rank": local, "world_size": dist.get_world_size(),
            "device": dev, "uuid": str(getattr(props, "uuid", "")), "name": props.name}
    # a real collective: every rank contributes its rank; the sum proves all N took part
    t = torch.tensor([float(dist.get_rank())], device="cuda")
    dist.all_reduce(t)
    views = [None] * dist.get_world_size()
    dist.all_gather_object(views, mine)
    if dist.get_rank() == 0:
        print(json.dumps({"world_size": dist.get_world_size(), "rank_sum": t.item(),
                          "ranks": views}), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

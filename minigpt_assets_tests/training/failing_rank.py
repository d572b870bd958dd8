"""A bench worker whose rank 1 fails before joining the process group (run by test_speed_paths under torchrun):
rank 0 would otherwise wait in `init_process_group` until its timeout."""

import os
import sys

from minigpt_assets.isolated import worker


def run(job: dict) -> dict:
    import torch.distributed as dist

    if os.environ["RANK"] == "1":
        raise RuntimeError("rank 1 cannot start")
    dist.init_process_group("gloo")
    dist.barrier()
    return {"ok": True}


if __name__ == "__main__":
    sys.exit(worker(run, sys.argv[1:], lambda job: {"job": "failing"}))

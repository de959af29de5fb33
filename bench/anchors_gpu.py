"""PyTorch + timm training-step throughput on a CUDA GPU, as a user would run it: channels_last,
automatic mixed precision (bf16 autocast, f32 master weights), Adam, KL-divergence loss, random
weights and random [batch, 3, 400, 300] inputs; the anchor bench/gpu.sh compares hbac with.

    python bench/anchors_gpu.py --arch mobilenetv3-large|efficientnetv2-b2 [--batch 64] [--steps 20]

Prints one line ending in samples_per_s=<x> and the peak memory PyTorch allocated.
"""

import argparse
import time

import timm
import torch


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", choices=["mobilenetv3-large", "efficientnetv2-b2"], required=True)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    a = p.parse_args()
    name = {"mobilenetv3-large": "tf_mobilenetv3_large_100",
            "efficientnetv2-b2": "tf_efficientnetv2_b2"}[a.arch]
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    model = timm.create_model(name, pretrained=False, num_classes=6).to(dev)
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-7)
    kl = torch.nn.KLDivLoss(reduction="batchmean")
    x = torch.rand(a.batch, 3, 400, 300, device=dev).mul_(255).to(memory_format=torch.channels_last)
    y = torch.softmax(torch.rand(a.batch, 6, device=dev), dim=1)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x)
        loss = kl(torch.log_softmax(out.float(), dim=1), y)
        loss.backward()
        opt.step()

    for _ in range(a.warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    mean = sum(times) / len(times)
    print(f"anchor=torch-amp-channels_last (torch {torch.__version__} timm {timm.__version__} "
          f"{torch.cuda.get_device_name()}) arch={a.arch} batch={a.batch} "
          f"max_allocated_mib={torch.cuda.max_memory_allocated() / 2**20:.0f} "
          f"step_seconds={[round(t, 4) for t in times]} samples_per_s={a.batch / mean:.2f}",
          flush=True)


if __name__ == "__main__":
    main()

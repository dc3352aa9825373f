"""What the machine can do, and how much of it Conv-4 training uses.

``matmul_gflops`` measures fp32 matrix-multiply throughput (the ceiling for dense
layers); ``conv4_throughput`` measures Conv-4 forward+backward on 28×28 images and
converts it to GFLOP/s by counting the convolutions' multiply-adds.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.models import Conv4


def _best_time(fn, repeats: int = 5, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_gflops(n: int = 2048) -> float:
    """Best fp32 GFLOP/s of an n×n matmul with the current thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / _best_time(lambda: a @ b) / 1e9


def conv_flops(model: nn.Module, image_shape=(1, 28, 28)) -> float:
    """Forward FLOPs (2 per multiply-add) of the convolutions and linear layers of ``model`` for one image."""
    total = 0.0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += 2.0 * output[0].numel() * k
        elif isinstance(module, nn.Linear):
            total += 2.0 * module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *image_shape))
    for h in handles:
        h.remove()
    return total


def plain_conv4(depth: int = 4, width: int = 64) -> nn.Sequential:
    """The textbook Conv-4 (conv, BN, ReLU, pool; default memory layout): the reference."""
    blocks = [nn.Sequential(nn.Conv2d(1 if i == 0 else width, width, 3, padding=1), nn.BatchNorm2d(width),
                            nn.ReLU(inplace=True), nn.MaxPool2d(2)) for i in range(depth)]
    return nn.Sequential(*blocks, nn.Flatten())


def conv4_throughput(batch: int = 360, variant: str = "fewshot", steps: int = 5) -> dict:
    """Images/s of Conv-4 forward+backward (a 60-way 1-shot 5-query ProtoNet step is 360 images).

    ``variant``: ``fewshot`` (fewshot's Conv4: pool before ReLU, channels-last),
    ``plain`` (the textbook block order and layout), ``plain-channels-last``,
    ``swapped`` (pool before ReLU, default layout).
    """
    torch.manual_seed(0)
    x = torch.randn(batch, 1, 28, 28)
    if variant == "fewshot":
        model = Conv4(1)
    else:
        model = plain_conv4()
        if variant == "swapped":
            for block in model[:4]:
                block[2], block[3] = block[3], block[2]
        if variant == "plain-channels-last":
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
    model.train()
    target = torch.randn(batch, 64)

    def step():
        model.zero_grad(set_to_none=True)
        F.mse_loss(model(x), target).backward()

    seconds = _best_time(step, repeats=steps)
    flops = 3 * conv_flops(Conv4(1))  # backward costs about twice the forward
    return {"images_per_second": batch / seconds, "gflops": flops * batch / seconds / 1e9,
            "flops_per_image": flops, "batch": batch, "variant": variant}


if __name__ == "__main__":
    print(f"threads {torch.get_num_threads()}, matmul {matmul_gflops():.1f} GFLOP/s")
    for variant in ("plain", "plain-channels-last", "swapped", "fewshot"):
        print(conv4_throughput(variant=variant))

"""A scaling model for HF's CG on N GPUs: up to how many GPUs does a curvature product scale?

    python benchmarks/scaling_model.py                  # the README's table
    python benchmarks/scaling_model.py --tflops 30 --launch-us 8 --busbw-nvlink 100

No GPU was measured here: every GPU number below is an *assumption*, printed with the table and
changeable by a flag. Inside CG the only communication is one all-reduce of one flat vector
(the parameter count, float32) per curvature product (``hessfree.distributed``), so with the
curvature batch B split over N GPUs one product takes

    t(N) = compute(B / N) + allreduce(N),
    compute(b) = 6·P·b / (utilisation · peak FLOP/s) + kernels · launch,
    allreduce(N) = latency + S · 2(N − 1)/N / busbw          (NCCL's ring; busbw as nccl-tests
                                                               reports it, S = 4·P bytes)

where 6·P FLOPs per case is one forward and one backward pass (a cached GGN product costs 1.05
gradients on the CPU, ``benchmarks/RESULTS.md``) and ``kernels`` = 6 per linear layer (forward
R-op and backward: matmul, bias, activation each). The efficiency is E(N) = t(1) / (N · t(N));
the table gives the largest N with E ≥ 80 %.

Bandwidths (bus bandwidth, the nccl-tests convention, at messages of a few MB, where rings do
not yet reach their peak): NVLink/NVSwitch within one node ~150 GB/s (about a third of the
large-message peak of an 8-GPU H100/H200 node), latency 15 µs; 100 Gb/s Ethernet (RoCE) between
nodes ~10 GB/s, latency 30 µs.
"""

from __future__ import annotations

import argparse

# parameters and linear layers (hessfree.models), Martens' curvature batch (training set /
# numchunks, [HFDemo]) and the full training set (the gradient's batch)
MODELS = {
    "curves-ae": (842_340, 12, 5_000, 20_000),
    "mnist-ae": (2_837_314, 8, 7_500, 60_000),
    "faces-ae": (7_537_655, 8, 5_175, 103_500),
}


def product_time(P: int, layers: int, b: float, a: argparse.Namespace) -> float:
    """Seconds of one curvature product over ``b`` cases on one GPU."""
    return 6.0 * P * b / (a.utilisation * a.tflops * 1e12) + 6 * layers * a.launch_us * 1e-6


def allreduce_time(P: int, n: int, busbw: float, latency_us: float) -> float:
    """Seconds of one ring all-reduce of ``P`` float32 values over ``n`` GPUs."""
    if n == 1:
        return 0.0
    return latency_us * 1e-6 + 4.0 * P * 2.0 * (n - 1) / n / (busbw * 1e9)


def efficiency(P: int, layers: int, B: int, n: int, busbw: float, latency_us: float,
               a: argparse.Namespace) -> float:
    t1 = product_time(P, layers, B, a)
    tn = product_time(P, layers, B / n, a) + allreduce_time(P, n, busbw, latency_us)
    return t1 / (n * tn)


def largest(P: int, layers: int, B: int, busbw: float, latency_us: float,
            a: argparse.Namespace, target: float = 0.8) -> int:
    n = 1
    while n < 1024 and efficiency(P, layers, B, n + 1, busbw, latency_us, a) >= target:
        n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tflops", type=float, default=67.0,
                    help="peak float32 TFLOP/s (H100/H200 SXM: 67)")
    ap.add_argument("--utilisation", type=float, default=0.4,
                    help="fraction of peak reached by the GEMMs")
    ap.add_argument("--launch-us", type=float, default=5.0, help="seconds per kernel launch, in µs")
    ap.add_argument("--busbw-nvlink", type=float, default=150.0, help="GB/s")
    ap.add_argument("--busbw-ethernet", type=float, default=10.0, help="GB/s")
    a = ap.parse_args()
    links = {"NVLink": (a.busbw_nvlink, 15.0), "100 Gb/s Ethernet": (a.busbw_ethernet, 30.0)}
    print(f"assumed: {a.tflops:g} TFLOP/s peak float32 at {a.utilisation:.0%}, "
          f"{a.launch_us:g} µs per kernel, NVLink {a.busbw_nvlink:g} GB/s, "
          f"Ethernet {a.busbw_ethernet:g} GB/s\n")
    print("| model | vector | batch | product on 1 GPU | all-reduce, 8 GPUs NVLink / Ethernet "
          "| E(2) / E(4) / E(8) NVLink | largest N at E >= 80%: NVLink / Ethernet |")
    print("|---|---|---|---|---|---|---|")
    for name, (P, layers, curv, full) in MODELS.items():
        for label, B in (("curvature", curv), ("full set", full)):
            t1 = product_time(P, layers, B, a)
            ar = [allreduce_time(P, 8, bw, lat) for bw, lat in links.values()]
            eff = [efficiency(P, layers, B, n, *links["NVLink"], a) for n in (2, 4, 8)]
            big = [largest(P, layers, B, bw, lat, a) for bw, lat in links.values()]
            print(f"| {name} | {4 * P / 1e6:.1f} MB | {label} {B:,} | {t1 * 1e3:.2f} ms "
                  f"| {ar[0] * 1e3:.3f} / {ar[1] * 1e3:.2f} ms "
                  f"| {' / '.join(f'{e:.0%}' for e in eff)} | {big[0]} / {big[1]} |")


if __name__ == "__main__":
    main()

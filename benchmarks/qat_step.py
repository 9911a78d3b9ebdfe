"""One QAT training step (forward, backward, AdamW) of ResNet-18 (64 px, batch 32) with per-channel 2/4/8-bit fake
quantization, against the same step in FP32. Prints one JSON object as the last line: {"ratio": quantized / fp32, ...}.
Run: .venv/bin/python benchmarks/qat_step.py"""
import json, statistics, time
import torch, torch.nn.functional as F, torchvision
from fairquant.importance import target_layers
from fairquant.mixed_precision import assign_bits, quantize_model

torch.set_num_threads(2)
REPEATS, WARMUP = 9, 2

def make(quantized:bool):
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=10).train()
    if quantized:
        g = torch.Generator().manual_seed(1)
        scores = {k: torch.rand(mod.weight.shape, generator=g) for k, mod in target_layers(m).items()}
        quantize_model(m, assign_bits(scores, 'per_channel', (2, 4, 8), (0.2, 0.4, 0.4)), 'per_channel')
    return m, torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0.01)

def step(m, opt, x, y):
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(m(x), y).backward()
    opt.step()

def main():
    x, y = torch.randn(32, 3, 64, 64), torch.randint(0, 10, (32,))
    runs = {'fp32': make(False), 'quant': make(True)}
    times = {k: [] for k in runs}
    for i in range(WARMUP + REPEATS):
        order = list(runs.items()) if i % 2 == 0 else list(runs.items())[::-1]   # interleaved, alternating which goes first
        for k, (m, opt) in order:
            t = time.perf_counter(); step(m, opt, x, y); dt = time.perf_counter() - t
            if i >= WARMUP: times[k].append(dt)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps(dict(benchmark='qat_step', model='resnet18', img_size=64, batch=32, granularity='per_channel',
                          bits=[2, 4, 8], repeats=REPEATS, threads=torch.get_num_threads(),
                          fp32_s=round(med['fp32'], 4), quant_s=round(med['quant'], 4), ratio=round(med['quant']/med['fp32'], 4))))

if __name__ == '__main__': main()

"""One QAT training step (forward, backward, AdamW) of ResNet-18 (64 px, batch 32) with per-channel 2/4/8-bit fake
quantization, against the same step in FP32, interleaved round by round (`harness.interleaved`). Prints one JSON object
as the last line: {"ratio": median over the rounds of quantized / fp32 within a round, "ratio_min", "ratio_max", ...}.
`--fused` puts the fused kernel (`torch.fake_quantize_per_channel_affine`) on CPU too, which `FakeQuant` uses only on
CUDA: it shows why. `aa_ratio` (with its min and max) is an A/A control timed in the same rounds: a second, identical
FP32 model against the first, 1 on a quiet machine; its spread is how far two identical steps land apart in this run.
Run: .venv/bin/python benchmarks/qat_step.py [--fused] [--rounds 15]"""
import argparse, json, statistics
import torch, torch.nn.functional as F, torchvision
from harness import interleaved, round_ratios, spread
from fairquant.importance import target_layers
from fairquant.mixed_precision import assign_bits, quantize_model, quantizer

torch.set_num_threads(2)
ROUNDS, WARMUP = 15, 2   # each round is short (two steps), so three times the harness's minimum of 5: a steadier median

def make(quantized:bool, fused:bool=None):
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=10).train()
    if quantized:
        g = torch.Generator().manual_seed(1)
        scores = {k: torch.rand(mod.weight.shape, generator=g) for k, mod in target_layers(m).items()}
        quantize_model(m, assign_bits(scores, 'per_channel', (2, 4, 8), (0.2, 0.4, 0.4)), 'per_channel')
        for mod in m.modules():
            if (q := quantizer(mod)) is not None: q.fused = fused
    return m, torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0.01)

def step(m, opt, x, y):
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(m(x), y).backward()
    opt.step()

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--fused', action='store_true', help='the fused fake-quant kernel on CPU too')
    ap.add_argument('--rounds', type=int, default=ROUNDS, help='interleaved timed rounds (at least 5)')
    a = ap.parse_args()
    if a.rounds < 5: ap.error(f'--rounds {a.rounds}: at least 5 interleaved rounds')
    x, y = torch.randn(32, 3, 64, 64), torch.randint(0, 10, (32,))
    runs = {'fp32': make(False), 'quant': make(True, True if a.fused else None), 'fp32_again': make(False)}   # the last: A/A control
    times = interleaved({k: (lambda m=m, o=o: step(m, o, x, y)) for k, (m, o) in runs.items()}, rounds=a.rounds, warmup=WARMUP)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps(dict(benchmark='qat_step', model='resnet18', img_size=64, batch=32, granularity='per_channel', bits=[2, 4, 8],
                          fake_quant='fused kernel' if a.fused else 'vectorised (CPU default)', repeats=a.rounds, warmup=WARMUP,
                          threads=torch.get_num_threads(), fp32_s=round(med['fp32'], 4), quant_s=round(med['quant'], 4),
                          **spread('ratio', round_ratios(times, 'quant', 'fp32')), **spread('aa_ratio', round_ratios(times, 'fp32_again', 'fp32')))))

if __name__ == '__main__': main()

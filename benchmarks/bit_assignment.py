"""`assign_bits` per parameter for every Conv2d/Linear weight of ResNet-18 (11.2 M weights, random scores), against
the obvious vectorised alternative (a full stable sort of all units, `by_sort`), which must give the same bits.

Both run interleaved in this one process with `benchmarks/harness.py` (one warm-up round, then `ROUNDS` rounds, the
order rotated by one each round), 2 torch threads. Prints one JSON object as the last line: `seconds` is the median
seconds of `assign_bits` over the rounds with `seconds_min`/`seconds_max` beside it, `sort_seconds` the same for the
sort, and `ratio` = assign_bits / sort within each round (below 1 = assign_bits faster), median with its spread.
`make bench` appends that line to benchmarks/results.jsonl. Run: .venv/bin/python benchmarks/bit_assignment.py"""
import json
import numpy as np, torch, torchvision
from fairquant.importance import target_layers
from fairquant.mixed_precision import assign_bits
from harness import interleaved, round_ratios, spread

torch.set_num_threads(2)
ROUNDS = 7

def by_sort(scores, bits=(2, 4, 8), levels=(0.2, 0.4, 0.4)):
    "Baseline: stable argsort of all units, then rank cuts"
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    rank = torch.empty(flat.numel(), dtype=torch.long)
    rank[torch.sort(flat, stable=True).indices] = torch.arange(flat.numel())
    cuts = torch.tensor([round(c*flat.numel()) for c in np.cumsum(levels)[:-1]])
    b = torch.tensor(bits, dtype=torch.int8)[torch.bucketize(rank, cuts, right=True)]
    out, i = {}, 0
    for k, s in scores.items(): out[k] = b[i:i+s.numel()].reshape(s.shape); i += s.numel()
    return out

def main():
    m = torchvision.models.resnet18(num_classes=1000)
    g = torch.Generator().manual_seed(0)
    scores = {k: torch.rand(mod.weight.shape, generator=g) for k, mod in target_layers(m).items()}
    n = sum(s.numel() for s in scores.values())
    a, b = assign_bits(scores, 'per_param'), by_sort(scores)
    same = all(torch.equal(a[k], b[k]) for k in a)
    t = interleaved({'assign_bits': lambda: assign_bits(scores, 'per_param'), 'sort': lambda: by_sort(scores)}, rounds=ROUNDS, warmup=1)
    print(json.dumps(dict(benchmark='bit_assignment', model='resnet18', granularity='per_param', units=n, layers=len(scores),
                          rounds=ROUNDS, threads=torch.get_num_threads(), same_as_sort=same,
                          **spread('sort_seconds', t['sort']), **spread('ratio', round_ratios(t, 'assign_bits', 'sort'), 3),
                          **spread('seconds', t['assign_bits']))))

if __name__ == '__main__': main()

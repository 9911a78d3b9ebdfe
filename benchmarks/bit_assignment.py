"""`assign_bits` per parameter for every Conv2d/Linear weight of ResNet-18 (11.2 M weights, random scores), against
the obvious vectorised alternative (a full stable sort of all units). Prints one JSON object as the last line:
{"seconds": median seconds of assign_bits, ...}. Run: .venv/bin/python benchmarks/bit_assignment.py"""
import json, statistics, time
import numpy as np, torch, torchvision
from fairquant.importance import target_layers
from fairquant.mixed_precision import assign_bits

torch.set_num_threads(2)
REPEATS = 5

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
    times = {'assign_bits': [], 'sort': []}
    for _ in range(REPEATS):
        for k, fn in (('assign_bits', lambda: assign_bits(scores, 'per_param')), ('sort', lambda: by_sort(scores))):
            t = time.perf_counter(); fn(); times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps(dict(benchmark='bit_assignment', model='resnet18', granularity='per_param', units=n, layers=len(scores),
                          repeats=REPEATS, threads=torch.get_num_threads(), same_as_sort=same,
                          sort_seconds=round(med['sort'], 4), seconds=round(med['assign_bits'], 4))))

if __name__ == '__main__': main()

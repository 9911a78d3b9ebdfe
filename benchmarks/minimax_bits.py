"""`minimax_bits` per output channel for every Conv2d/Linear weight of ResNet-18 (4,805 channels with a 5-class head,
widths 2/4/8, 7 groups, budget 4 bits), on random sensitivities shaped like real ones: a heavy-tailed scale per
channel proportional to its weights, a factor per group, and an error that falls about 4x per added bit. The worst
group (`objective='max'`, the timed target: at most 10 s) and the group-blind program (`'mean'`, equal shares) run
interleaved in this one process with `benchmarks/harness.py` (one warm-up round, then `ROUNDS` rounds), 2 torch threads.
Prints one JSON object as the last line: `seconds` is the median seconds of the 'max' solve over the rounds with
`seconds_min`/`seconds_max` beside it, `gap` the relative gap of its answer to the bound of the linear relaxation
(median; `gap_max` the largest), `mean_seconds`/`mean_gap` the same for 'mean'. `make bench` appends that line to
benchmarks/results.jsonl. Run: .venv/bin/python benchmarks/minimax_bits.py"""
import json, math, statistics
import numpy as np, torch, torchvision
from harness import interleaved, spread
from fairquant.importance import target_layers
from fairquant.mixed_precision import minimax_solve

torch.set_num_threads(2)
BITS, BUDGET, GROUPS, ROUNDS = (2, 4, 8), 4.0, 7, 5

def resnet18_problem(groups:int=GROUPS, seed:int=0)->tuple:
    "(sensitivity, sizes): one Tensor(groups, channels, 3) and one Tensor(channels) per weight of a 5-class ResNet-18"
    rng = np.random.default_rng(seed)
    err = np.array([1/(2**(b - 1) - 1)**2 for b in BITS])            # squared step of each width, relative
    sens, sizes = {}, {}
    for k, m in target_layers(torchvision.models.resnet18(num_classes=5)).items():
        o, per = m.weight.shape[0], m.weight[0].numel()
        scale = rng.lognormal(0, 2, o)*per
        s = scale[None, :, None]*rng.lognormal(0, 0.7, (groups, o, 1))*err[None, None]*rng.lognormal(0, 0.1, (groups, o, len(BITS)))
        sens[k], sizes[k] = torch.from_numpy(s), torch.full((o,), float(per))
    return sens, sizes

def main():
    sens, sizes = resnet18_problem()
    infos = {'max': [], 'mean': []}
    def run(obj):
        _, info = minimax_solve(sens, sizes, BITS, BUDGET, obj, None if obj == 'max' else [1/GROUPS]*GROUPS)
        infos[obj].append(info)
    times = interleaved({'max': lambda: run('max'), 'mean': lambda: run('mean')}, rounds=ROUNDS)
    last = infos['max'][-1]
    print(json.dumps(dict(benchmark='minimax_bits', model='resnet18', granularity='per_channel', units=last['units'], groups=GROUPS,
                          bits=list(BITS), budget=BUDGET, rounds=ROUNDS, threads=torch.get_num_threads(), method=last['method'],
                          free_units=last['free_units'], avg_bits=round(last['avg_bits'], 6),
                          gap=round(statistics.median(i['gap'] for i in infos['max']), 6), gap_max=round(max(i['gap'] for i in infos['max']), 6),
                          **spread('mean_seconds', times['mean']), mean_gap=round(statistics.median(i['gap'] for i in infos['mean']), 6),
                          **spread('seconds', times['max']))))

if __name__ == '__main__': main()

"""group_importance(metric='grape') with 7 groups vs one plain forward+backward on the same batch.

ResNet-18 (torchvision, random weights, 7 classes), 64 px, batch 64, CPU, 2 threads. Both in eval mode (as
`group_importance` runs). The pair runs interleaved (`harness.interleaved`, 5 rounds after a warm-up round); the
ratio is taken within each round and reported as its median with the min and max (`ratio`, `ratio_min`,
`ratio_max`). `ratio` is the steady state: the layout probe's verdict is kept per model, so a second call on the same
model (as the stage makes six per checkpoint) does not probe again; `cold_ratio` is a first call on the model (the
cached verdict dropped before each call). Also times the reference's way (one backward per group), for scale.
Prints one JSON object as the last line. Target: ratio <= 1.3.
"""
import json, sys
from pathlib import Path
import torch, torch.nn.functional as F, torchvision
sys.path.insert(0, str(Path(__file__).parent))
from harness import interleaved, round_ratios, spread
from fairquant import importance
from fairquant.importance import group_importance, target_layers

def main(rounds:int=5, groups:int=7, batch:int=64, px:int=64, threads:int=2):
    torch.set_num_threads(threads); torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=groups).eval()
    x, y = torch.randn(batch, 3, px, px), torch.randint(0, groups, (batch,))
    g = torch.arange(batch) % groups
    ws = [m.weight for m in target_layers(model).values()]
    def base():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
    def fast(): group_importance(model, [(x, y, g)], 'grape')
    def cold(): importance._LAYOUTS.pop(model, None); group_importance(model, [(x, y, g)], 'grape')
    def per_group():   # the reference: one forward, one backward per group, metric on .grad
        ce = F.cross_entropy(model(x), y, reduction='none')
        for k in range(groups):
            gs = torch.autograd.grad(ce[g == k].mean(), ws, retain_graph=True)
            _ = [(gr*w).square() for gr, w in zip(gs, ws)]
    t = interleaved(dict(base=base, fast=fast, cold=cold, per_group=per_group), rounds=rounds)
    med = lambda k: spread(k, t[k])[k]
    print(json.dumps(dict(**spread('ratio', round_ratios(t, 'fast', 'base'), 3), **spread('cold_ratio', round_ratios(t, 'cold', 'base'), 3),
                          **spread('per_group_backward_ratio', round_ratios(t, 'per_group', 'base'), 3),
                          fast_s=med('fast'), fwd_bwd_s=med('base'), groups=groups, batch=batch, px=px, rounds=rounds,
                          threads=torch.get_num_threads(), torch=torch.__version__)))

if __name__ == '__main__': main()

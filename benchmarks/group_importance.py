"""group_importance(metric='grape') with 7 groups vs one plain forward+backward on the same batch.

ResNet-18 (torchvision, random weights, 7 classes), 64 px, batch 64, CPU, 2 threads. Both in eval mode (as
`group_importance` runs). Interleaved repeats, medians. Also times the reference's way (one backward per group)
3 repeats, for scale. Prints one JSON object as the last line: {"ratio": fast / fwd+bwd, ...}. Target: ratio <= 1.5.
"""
import json, statistics, time
import torch, torch.nn.functional as F, torchvision
from fairquant.importance import group_importance, target_layers

def main(repeats:int=7, groups:int=7, batch:int=64, px:int=64):
    torch.set_num_threads(2); torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=groups).eval()
    x, y = torch.randn(batch, 3, px, px), torch.randint(0, groups, (batch,))
    g = torch.arange(batch) % groups
    def base():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
    def fast(): group_importance(model, [(x, y, g)], 'grape')
    def per_group():   # the reference: one forward, one backward per group, metric on .grad
        ws = [m.weight for m in target_layers(model).values()]
        ce = F.cross_entropy(model(x), y, reduction='none')
        for k in range(groups):
            gs = torch.autograd.grad(ce[g == k].mean(), ws, retain_graph=True)
            _ = [(gr*w).square() for gr, w in zip(gs, ws)]
    base(); fast()   # warm-up
    t = {'base': [], 'fast': [], 'per_group': []}
    for i in range(repeats):
        for k, f in (('base', base), ('fast', fast)) + ((('per_group', per_group),) if i < 3 else ()):
            s = time.perf_counter(); f(); t[k].append(time.perf_counter() - s)
    med = {k: statistics.median(v) for k, v in t.items()}
    t_ref = med['per_group']
    print(json.dumps(dict(ratio=round(med['fast']/med['base'], 3), fast_s=round(med['fast'], 4), fwd_bwd_s=round(med['base'], 4),
                          per_group_backward_ratio=round(t_ref/med['base'], 3), groups=groups, batch=batch, px=px,
                          repeats=repeats, threads=torch.get_num_threads(), torch=torch.__version__)))

if __name__ == '__main__': main()

"""group_importance(metric='hawq', 4 probes) vs metric='grape' on the same batch, for vit_mini and ResNet-18.

vit_mini (the project's preset: timm's test_vit, 4-pixel patches) at 32 px and ResNet-18 (torchvision) at 64 px,
random weights, 5 classes, one batch of 64 images in 2 groups (the synthetic data's light/dark), CPU, 2 threads.
Each model's pair runs interleaved (`harness.interleaved`, 5 rounds after a warm-up round); per model the within-
round ratio hawq/grape is reported as its median with min and max (`ratio_vit_mini`, `ratio_resnet18`, each with
`_min`/`_max`), and `ratio` (with `ratio_min`/`ratio_max`) is the worse model's. Prints one JSON object as the last
line. Target (issue 20): ratio <= 4; see the notebook's HAWQ section for why 4 exact Hessian-vector products cost
about 8 forward-and-backward passes.

The control for that claim, timed in the same rounds: `floor`, the textbook Hutchinson estimate of one map for the
whole batch (PyHessian's way: one backward with create_graph, then one double backward per probe, `v ⊙ Hv` summed),
no groups. `floor_ratio_<model>` is floor/grape (what any exact 4-probe estimator costs here, before the split by
group) and `over_floor_<model>` is hawq/floor (what the per-group maps add); each with its min and max.
`--func` adds `func`, the same map by forward-over-reverse (`torch.func`: jvp of grad, the probes batched with vmap),
as `func_ratio_<model>` (func/grape): the other exact way, to show it is not cheaper.
Run: .venv/bin/python benchmarks/hawq.py [--func] [--rounds 5]
"""
import argparse, json, sys
from pathlib import Path
import torch, torchvision
sys.path.insert(0, str(Path(__file__).parent))
from harness import interleaved, round_ratios, spread
from fairquant.finetune import build_model, model_spec
from fairquant.importance import group_importance, target_layers, _probes

MODELS = {'vit_mini': (lambda: build_model(model_spec('vit_mini', img_size=32), list('abcde')), 32),
          'resnet18': (lambda: torchvision.models.resnet18(num_classes=5), 64)}

def rademacher(ws:list, probes:int, seed:int)->list:
    "`probes` lists of ±1 tensors shaped like `ws`: the probes `group_importance` draws, from a CPU generator seeded `seed`"
    return _probes(ws, probes, torch.Generator().manual_seed(seed))

def hutchinson_floor(model, batch, probes:int, seed:int=0)->list:
    "One whole-batch map mean_s v_s ⊙ H v_s (Rademacher v_s), every weight of `target_layers`: the textbook double backward"
    x, y, _ = batch
    ws = [m.weight for m in target_layers(model).values()]
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):   # fused attention has no double backward
        grads = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), y), ws, create_graph=True)
        est = [torch.zeros_like(w) for w in ws]
        for s, vs in enumerate(rademacher(ws, probes, seed)):
            hv = torch.autograd.grad(grads, ws, vs, retain_graph=s + 1 < probes)
            for e, v, h in zip(est, vs, hv): e.addcmul_(v, h)
    return [e.div_(probes) for e in est]

def func_floor(model, batch, probes:int, seed:int=0)->dict:
    "The same whole-batch map as `hutchinson_floor` by forward-over-reverse: torch.func's jvp of grad, the probes in one vmap"
    from torch.func import functional_call, grad, jvp, vmap
    x, y, _ = batch
    names = list(target_layers(model))
    state = {**{k: v.detach() for k, v in model.named_parameters()}, **dict(model.named_buffers())}
    ws = {k: state[k] for k in names}
    P = rademacher(list(ws.values()), probes, seed)
    V = {k: torch.stack([vs[i] for vs in P]) for i, k in enumerate(names)}
    g = grad(lambda w: torch.nn.functional.cross_entropy(functional_call(model, {**state, **w}, (x,)), y))
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        hv = vmap(lambda v: jvp(g, (ws,), (v,))[1])(V)
    return {k: (V[k]*hv[k]).mean(0) for k in names}

def main(rounds:int=5, probes:int=4, groups:int=2, batch:int=64, threads:int=2, func:bool=False):
    torch.set_num_threads(threads)
    out, worst = {}, None
    for name, (make, px) in MODELS.items():
        torch.manual_seed(0)
        model = make().eval()
        b = [(torch.randn(batch, 3, px, px), torch.randint(0, 5, (batch,)), torch.arange(batch) % groups)]
        t = interleaved(dict(grape=lambda: group_importance(model, b, 'grape'),
                             hawq=lambda: group_importance(model, b, 'hawq', hawq_samples=probes),
                             floor=lambda: hutchinson_floor(model, b[0], probes),
                             **({'func': lambda: func_floor(model, b[0], probes)} if func else {})), rounds=rounds)
        s = spread(f'ratio_{name}', round_ratios(t, 'hawq', 'grape'), 3)
        out.update(s, **spread(f'floor_ratio_{name}', round_ratios(t, 'floor', 'grape'), 3),
                   **spread(f'over_floor_{name}', round_ratios(t, 'hawq', 'floor'), 3),
                   **(spread(f'func_ratio_{name}', round_ratios(t, 'func', 'grape'), 3) if func else {}),
                   **{f'{k}_s_{name}': spread(k, v)[k] for k, v in t.items()})
        if worst is None or s[f'ratio_{name}'] > out[f'ratio_{worst}']: worst = name
    print(json.dumps(dict(ratio=out[f'ratio_{worst}'], ratio_min=out[f'ratio_{worst}_min'], ratio_max=out[f'ratio_{worst}_max'], worst=worst,
                          **out, probes=probes, groups=groups, batch=batch, rounds=rounds, threads=torch.get_num_threads(), torch=torch.__version__)))

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--func', action='store_true', help="also time torch.func's forward-over-reverse map")
    ap.add_argument('--rounds', type=int, default=5, help='interleaved timed rounds (at least 5)')
    a = ap.parse_args()
    if a.rounds < 5: ap.error(f'--rounds {a.rounds}: at least 5 interleaved rounds')
    main(rounds=a.rounds, func=a.func)

"""group_importance(metric='hawq', 4 probes) vs metric='grape' on the same batch, for vit_mini and ResNet-18.

vit_mini (the project's preset: timm's test_vit, 4-pixel patches) at 32 px and ResNet-18 (torchvision) at 64 px,
random weights, 5 classes, one batch of 64 images in 2 groups (the synthetic data's light/dark), CPU, 2 threads.
Each model's pair runs interleaved (`harness.interleaved`, 5 rounds after a warm-up round); per model the within-
round ratio hawq/grape is reported as its median with min and max (`ratio_vit_mini`, `ratio_resnet18`, each with
`_min`/`_max`), and `ratio` (with `ratio_min`/`ratio_max`) is the worse model's. Prints one JSON object as the last
line. Target (issue 20): ratio <= 4; see the notebook's HAWQ section for why 4 exact Hessian-vector products cost
about 8 forward-and-backward passes.
"""
import json, sys
from pathlib import Path
import torch, torchvision
sys.path.insert(0, str(Path(__file__).parent))
from harness import interleaved, round_ratios, spread
from fairquant.finetune import build_model, model_spec
from fairquant.importance import group_importance

MODELS = {'vit_mini': (lambda: build_model(model_spec('vit_mini', img_size=32), list('abcde')), 32),
          'resnet18': (lambda: torchvision.models.resnet18(num_classes=5), 64)}

def main(rounds:int=5, probes:int=4, groups:int=2, batch:int=64, threads:int=2):
    torch.set_num_threads(threads)
    out, worst = {}, None
    for name, (make, px) in MODELS.items():
        torch.manual_seed(0)
        model = make().eval()
        b = [(torch.randn(batch, 3, px, px), torch.randint(0, 5, (batch,)), torch.arange(batch) % groups)]
        t = interleaved(dict(grape=lambda: group_importance(model, b, 'grape'),
                             hawq=lambda: group_importance(model, b, 'hawq', hawq_samples=probes)), rounds=rounds)
        s = spread(f'ratio_{name}', round_ratios(t, 'hawq', 'grape'), 3)
        out.update(s, **{f'hawq_s_{name}': spread('h', t['hawq'])['h'], f'grape_s_{name}': spread('g', t['grape'])['g']})
        if worst is None or s[f'ratio_{name}'] > out[f'ratio_{worst}']: worst = name
    print(json.dumps(dict(ratio=out[f'ratio_{worst}'], ratio_min=out[f'ratio_{worst}_min'], ratio_max=out[f'ratio_{worst}_max'], worst=worst,
                          **out, probes=probes, groups=groups, batch=batch, rounds=rounds, threads=torch.get_num_threads(), torch=torch.__version__)))

if __name__ == '__main__': main()

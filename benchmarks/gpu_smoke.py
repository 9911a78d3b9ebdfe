"""GPU smoke test: one real-size step of every stage that trains or evaluates, at 224 px, on the accelerator.

Where CUDA is present it builds ViT-B/16 (`vit_base_patch16_224`, timm) and ResNet-18 (torchvision) with random
weights (no download: their shapes are the pretrained models', their numbers do not matter for throughput) and times,
per model, in images per second:
- `finetune`: a training step (forward, backward, AdamW) in bfloat16 autocast, as stage 10 trains;
- `importance`: `fairquant.importance.group_importance(..., 'grape')` on 7 groups (stage 20);
- `qat`: a training step of the model fake-quantized per channel at 2/4/8 bits (`quantize_model`, stage 30);
- `validation`: an evaluation forward pass in bfloat16 autocast (stage 50).
Each is warmed up, then timed over `--steps` steps with `torch.cuda.synchronize()`; a stage that fails is reported with
its error (the smoke test's job is to say what does not run on the GPU), never hidden. Without CUDA it prints
{"skipped": ...} and exits 0, unless `--device cpu` asks for the same steps on the CPU at a small size (how the test
suite checks this script). Last line of stdout: one JSON object.

Run: .venv/bin/python benchmarks/gpu_smoke.py [--batch 64] [--steps 5] [--models vit_b16,resnet18]"""
import argparse, json, sys, time, traceback

import torch, torch.nn.functional as F, torchvision, timm

from fairquant.importance import group_importance, target_layers
from fairquant.mixed_precision import assign_bits, quantize_model

MODELS = {'vit_b16': lambda n, px: timm.create_model('vit_base_patch16_224', pretrained=False, num_classes=n, img_size=px),
          'resnet18': lambda n, px: torchvision.models.resnet18(num_classes=n)}


def _timed(fn, dev, steps:int, warmup:int=2)->float:
    "Seconds per call of `fn` after `warmup` calls, synchronising the device"
    sync = torch.cuda.synchronize if dev.type == 'cuda' else (lambda: None)
    for _ in range(warmup): fn()
    sync(); t = time.perf_counter()
    for _ in range(steps): fn()
    sync(); return (time.perf_counter() - t)/steps


def _train_step(m, opt, x, y, amp:bool):
    opt.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp): loss = F.cross_entropy(m(x), y)
    loss.backward(); opt.step()


def smoke(name:str, dev, batch:int, px:int, steps:int, classes:int=7, groups:int=7)->dict:
    "Images per second of each stage's step for one model on `dev` (an error string where a stage fails)"
    torch.manual_seed(0)
    x = torch.randn(batch, 3, px, px, device=dev); y = torch.randint(0, classes, (batch,), device=dev)
    g = torch.arange(batch, device=dev) % groups; amp = dev.type == 'cuda'
    out = {}
    def run(stage, make):
        try:
            fn = make(); out[stage] = round(batch/_timed(fn, dev, steps), 1)
        except Exception as e:   # reported, not hidden: this is what the smoke test is for
            out[stage] = f"error: {type(e).__name__}: {' '.join(str(e).split())[:300]}"
            traceback.print_exc(file=sys.stderr)
    def finetune():
        m = MODELS[name](classes, px).to(dev).train(); opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
        return lambda: _train_step(m, opt, x, y, amp)
    def importance():
        m = MODELS[name](classes, px).to(dev).eval()
        return lambda: group_importance(m, [(x, y, g)], 'grape', n_groups=groups)
    def qat():
        m = MODELS[name](classes, px).to(dev).train(); gen = torch.Generator().manual_seed(1)
        scores = {k: torch.rand(mod.weight.shape, generator=gen) for k, mod in target_layers(m).items()}
        quantize_model(m, assign_bits(scores, 'per_channel', (2, 4, 8), (0.2, 0.4, 0.4)), 'per_channel'); m.to(dev)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
        return lambda: _train_step(m, opt, x, y, amp)
    def validation():
        m = MODELS[name](classes, px).to(dev).eval()
        def f():
            with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp): m(x).float().softmax(1)
        return f
    for stage, make in (('finetune', finetune), ('importance', importance), ('qat', qat), ('validation', validation)): run(stage, make)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default='cuda', help="cuda (default; skipped without CUDA) or cpu (a small-size check of the same steps)")
    p.add_argument('--batch', type=int, default=None, help='images per step (default 64 on CUDA, 2 on CPU)')
    p.add_argument('--px', type=int, default=None, help='image side (default 224 on CUDA, 32 on CPU)')
    p.add_argument('--steps', type=int, default=5, help='timed steps per stage')
    p.add_argument('--models', default='vit_b16,resnet18', help=f"comma-separated, of {sorted(MODELS)}")
    a = p.parse_args(argv)
    models = a.models.split(',')
    if bad := [m for m in models if m not in MODELS]: p.error(f"--models: unknown {bad}; known {sorted(MODELS)}")
    if a.device == 'cuda' and not torch.cuda.is_available():
        print(json.dumps(dict(benchmark='gpu_smoke', skipped='no CUDA device on this machine', torch=torch.__version__))); return
    dev = torch.device(a.device)
    batch, px = a.batch or (64 if dev.type == 'cuda' else 2), a.px or (224 if dev.type == 'cuda' else 32)
    torch.backends.cuda.matmul.allow_tf32 = True; torch.backends.cudnn.allow_tf32 = True
    t0 = time.time()
    res = dict(benchmark='gpu_smoke', device=torch.cuda.get_device_name(0) if dev.type == 'cuda' else 'cpu', torch=torch.__version__,
               batch=batch, px=px, steps=a.steps, unit='images/s')
    for m in models:
        res[m] = smoke(m, dev, batch, px, a.steps)
        print(f"{m}: {res[m]}", file=sys.stderr, flush=True)
    res['failed'] = sorted(f'{m}.{s}' for m in models for s, v in res[m].items() if isinstance(v, str))
    res['seconds'] = round(time.time() - t0, 1)
    print(json.dumps(res))


if __name__ == '__main__': main()

"""INT8 vs FP32 speed of FairQuant's default onnxruntime recipes on the CPU (fairquant.onnx_int8).

ResNet-18 (torchvision) and ViT-S/16 (timm) at 224 px, random weights, exported with `export_onnx` and quantized with
`quantize_int8` on its defaults (static for both, dynamic for the ViT), plus two variants that show what a recipe
detail is worth: the static ViT without the bias fold (`vit_static_nofold`, fold_bias=False) and the dynamic ViT whose
patch-embedding convolution runs as onnxruntime's `ConvInteger` (`vit_dynamic_convinteger`, conv_weight_only=False:
the dynamic recipe before issue 20; the default stores that convolution's weights in int8 and computes it in float).

Timing: the sessions of one model run in this one process (2 intra-op threads, `onnx_session`), interleaved round by
round with `benchmarks/harness.py` (every session once per round, never twice in a row across rounds, one warm-up
round): `--rounds` rounds at batch 32, each time the best of 2 back-to-back calls of that session, and `--rounds1`
rounds at batch 1, the best of 3: the warm, steady-state time of a model answering call after call, the same for
both sides. (Before, a batch-32 time was one call, warm only when the harness happened to run that session twice in
a row: ResNet-18's ratio split into modes near 2.4 and 2.8–3.4 by which side was warm.) A ratio is FP32
time / INT8 time within one round (above 1 = INT8 faster); the JSON gives its median over the rounds under the key
(`vit_dynamic`) with the spread beside it (`vit_dynamic_min`, `vit_dynamic_max`). Batch 1 keys end in `_b1`.
Accuracy beside speed: `top1_agree` and `rel_logit_err` (max |INT8 − FP32| / max |FP32| logit) of each INT8 model
against its FP32 export on the 32 timing images (noise images: the agreement of random-weight models, not accuracy).

Where the time goes (`vit_op_ms`): onnxruntime's own profile of the ViT's FP32 and dynamic sessions (same options as
`onnx_session`, 2 threads, batch 32, the mean of 2 runs after a warm-up), kernel milliseconds per op type, and
`vit_dynamic_int8_share`, the share of the dynamic model's kernel time spent in integer ops (DynamicQuantizeMatMul,
MatMulInteger, DynamicQuantizeLinear, ConvInteger, ...). Everything else (attention's two activation×activation
MatMuls, Transpose, Split, GELU, LayerNorm, Softmax, Add, the patch convolution) runs in float in both models, so the
speed-up is bounded by Amdahl's law, and that float part, memory-bound element-wise work, is what moves with the
machine's load from round to round.

Usage: .venv/bin/python benchmarks/int8_speed.py [--rounds 7] [--rounds1 10] [--out DIR]
The last line of stdout is one JSON object; `size_ratio` is the largest INT8/FP32 file-size ratio.
Targets (2-core AVX512-VNNI Xeon, judged on the medians): resnet18_static >= 2.5, vit_static >= 1.9,
vit_dynamic >= 2.0, size_ratio <= 0.26. `make bench` appends that line to benchmarks/results.jsonl.
"""
import argparse, json, platform, sys, tempfile, time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

THREADS = 2
torch.set_num_threads(THREADS)

from fairquant.onnx_int8 import (export_onnx, preprocess_onnx, quantize_int8, onnx_session, run_onnx, CalibReader,
                                 optimized_graph, float_weight_ops)
from harness import interleaved, round_ratios, spread

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
TARGETS = dict(resnet18_static=('>=', 2.5), vit_static=('>=', 1.9), vit_dynamic=('>=', 2.0), size_ratio=('<=', 0.26))
# (name, mode, quantize_int8 options) per model; the first of each model is its default recipe
RECIPES = dict(resnet18=[('static', 'static', {})],
               vit=[('static', 'static', {}), ('dynamic', 'dynamic', {}), ('static_nofold', 'static', dict(fold_bias=False)),
                    ('dynamic_convinteger', 'dynamic', dict(conv_weight_only=False))])


def build(name):
    "A random-weight classifier (1000 classes) and its data config"
    torch.manual_seed(0)
    if name == 'resnet18':
        import torchvision
        m = torchvision.models.resnet18(weights=None)
    else:
        import timm
        m = timm.create_model('vit_small_patch16_224', pretrained=False)
    return m.eval(), dict(input_size=[3, 224, 224], mean=MEAN, std=STD, interpolation='bicubic', crop_pct=0.875)


def images(n, seed):
    "Normalised uniform-noise images in the model's input range (calibration and timing inputs)"
    x = np.random.default_rng(seed).random((n, 3, 224, 224), dtype=np.float32)
    return ((x - np.array(MEAN, np.float32)[:, None, None]) / np.array(STD, np.float32)[:, None, None]).astype(np.float32)


INTEGER_OPS = ('DynamicQuantizeMatMul', 'MatMulInteger', 'MatMulIntegerToFloat', 'DynamicQuantizeLinear', 'ConvInteger',
               'QLinearConv', 'QLinearMatMul', 'QGemm', 'QuantizeLinear', 'DequantizeLinear', 'QAttention')

def op_profile(path, x, threads:int=THREADS, runs:int=2)->dict:
    "{op type: mean kernel ms per run} from onnxruntime's profiler (options as `onnx_session`'s), over `runs` runs after a warm-up"
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level, so.log_severity_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL, 3
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.enable_profiling, so.profile_file_prefix = True, str(Path(path).with_suffix(''))
    s = ort.InferenceSession(str(path), so, providers=['CPUExecutionProvider'])
    for _ in range(runs + 1): s.run(None, {s.get_inputs()[0].name: x})
    events = json.loads(Path(s.end_profiling()).read_text())
    spans = sorted((e['ts'], e['ts'] + e['dur']) for e in events if e.get('name') == 'model_run')[1:]   # the timed runs
    if len(spans) != runs: raise RuntimeError(f"{path}: the profile has {len(spans) + 1} model runs, expected {runs + 1}")
    ms = Counter()
    for e in events:
        if e.get('cat') == 'Node' and e.get('name', '').endswith('_kernel_time') and any(a <= e['ts'] <= b for a, b in spans):
            ms[e['args']['op_name']] += e['dur']/1000
    return {k: round(v/runs, 1) for k, v in ms.most_common() if v/runs >= 0.05}

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--rounds', type=int, default=7, help='interleaved rounds at batch 32 (at least 5 for the spread)')
    p.add_argument('--rounds1', type=int, default=10, help='interleaved rounds at batch 1 (best of 3 calls each)')
    p.add_argument('--calib', type=int, default=8, help='calibration images (random, normalised)')
    p.add_argument('--out', default=None, help='keep the ONNX files here (default: a temp folder, removed)')
    a = p.parse_args()
    t_start = time.time()
    tmp = tempfile.TemporaryDirectory(prefix='fq_int8_speed_')
    d = Path(a.out or tmp.name); d.mkdir(parents=True, exist_ok=True)
    classes, groups = [f'c{i}' for i in range(1000)], ['all']
    calib = CalibReader([images(8, s) for s in range(max(1, a.calib // 8))])
    files, recipes = {}, {}
    for name, variants in RECIPES.items():
        m, dc = build(name)
        fp = export_onnx(m, d/f'{name}-fp32.onnx', classes, groups, dc, 'random-weights', '0'*64)
        files[f'{name}_fp32'] = fp
        del m
        pre = preprocess_onnx(fp, d/f'{name}-pre.onnx')   # once per model: (path, how)
        for v, mode, opts in variants:
            f = d/f'{name}-int8-{v}.onnx'
            t = time.time()
            recipes[f'{name}_{v}'] = quantize_int8(fp, f, mode, calib if mode == 'static' else None, pre, **opts)
            files[f'{name}_{v}'] = f
            print(f'{name} {v}: quantized in {time.time() - t:.1f}s', file=sys.stderr, flush=True)
    res = dict(benchmark='int8_speed', threads=THREADS, rounds=a.rounds, rounds_b1=a.rounds1,
               onnxruntime=__import__('onnxruntime').__version__, torch=torch.__version__,
               cpu=platform.processor() or platform.machine(), models=dict(resnet18='torchvision resnet18, 224 px',
               vit='timm vit_small_patch16_224 (ViT-S/16), 224 px'))
    sizes = {k: f.stat().st_size for k, f in files.items()}
    int8 = [k for k in files if not k.endswith('fp32')]
    res['size_ratios'] = {k: round(sizes[k] / sizes[f"{k.split('_')[0]}_fp32"], 4) for k in int8}
    res['size_ratio'] = max(res['size_ratios'].values())
    opt = {k: optimized_graph(files[k]) for k in int8}   # the graphs onnxruntime runs
    res['float_weight_ops_left'] = {k: len(float_weight_ops(g)) for k, g in opt.items()}
    res['conv_integer_ops'] = {k: Counter(n.op_type for n in g.graph.node).get('ConvInteger', 0) for k, g in opt.items()}
    del opt
    res['bias_folded'] = {k: r.get('bias_folded', 0) for k, r in recipes.items()}
    res['weight_only_convs'] = {k: r.get('weight_only_convs', 0) for k, r in recipes.items()}
    x32, x1 = images(32, 100), images(1, 101)
    for name in RECIPES:
        keys = [k for k in files if k.startswith(name + '_')]
        sess = {k: onnx_session(files[k], THREADS) for k in keys}
        feed = {k: s.get_inputs()[0].name for k, s in sess.items()}
        ref = run_onnx(sess[f'{name}_fp32'], x32, 32)
        for k in keys:
            if k.endswith('fp32'): continue
            y = run_onnx(sess[k], x32, 32)
            res.setdefault('top1_agree', {})[k] = float((y.argmax(1) == ref.argmax(1)).mean())
            res.setdefault('rel_logit_err', {})[k] = round(float(np.abs(y - ref).max() / np.abs(ref).max()), 4)
        for x, rounds, repeat, suffix in ((x32, a.rounds, 2, ''), (x1, a.rounds1, 3, '_b1')):
            t = interleaved({k: (lambda s=s, k=k: s.run(None, {feed[k]: x})) for k, s in sess.items()}, rounds, warmup=1, repeat=repeat)
            for k in keys:
                res.setdefault(f'ms{suffix or "_b32"}', {})[k] = round(1000 * float(np.median(t[k])), 2)
                if not k.endswith('fp32'): res.update(spread(f'{k}{suffix}', round_ratios(t, f'{name}_fp32', k), 3))
        if name == 'vit':
            res['vit_op_ms'] = {k: op_profile(files[f'vit_{k}'], x32) for k in ('fp32', 'dynamic')}
            dyn = res['vit_op_ms']['dynamic']
            res['vit_dynamic_int8_share'] = round(sum(v for k, v in dyn.items() if k in INTEGER_OPS)/sum(dyn.values()), 3)
        print(f'{name}: ' + ', '.join(f'{k} {v:.0f} ms' for k, v in res['ms_b32'].items() if k.startswith(name)), file=sys.stderr, flush=True)
        del sess
    res['targets'] = {k: v for k, (op, v) in TARGETS.items()}   # size_ratio: at most; the speed ratios: at least
    res['meets_targets'] = all(res[k] >= v if op == '>=' else res[k] <= v for k, (op, v) in TARGETS.items())
    res['seconds'] = round(time.time() - t_start, 1)
    tmp.cleanup()
    print(json.dumps(res))


if __name__ == '__main__':
    main()

"""INT8 vs FP32 speed of FairQuant's default onnxruntime recipes on the CPU (fairquant.onnx_int8).

ResNet-18 (torchvision) and ViT-S/16 (timm) at 224 px, random weights, exported with `export_onnx` and quantized with
`quantize_int8` on its defaults (static for both, dynamic for the ViT; plus the static ViT without the bias fold, to
show what the graph edit is worth). FP32 and INT8 sessions run in this one process, 2 intra-op threads, interleaved
(each repeat runs every session once, in turn), median of the repeats, at batch 32 and batch 1.

Usage: .venv/bin/python benchmarks/int8_speed.py [--repeats 5] [--repeats1 20] [--out DIR]
The last line of stdout is one JSON object: ratios are FP32 time / INT8 time (above 1 = INT8 faster), at batch 32
unless the key says `_b1`; `size_ratio` is the largest INT8/FP32 file-size ratio. Targets (2-core AVX512-VNNI Xeon):
resnet18_static >= 2.5, vit_static >= 1.9, vit_dynamic >= 1.9, size_ratio <= 0.26.
"""
import argparse, json, os, platform, sys, tempfile, time, warnings
from pathlib import Path

import numpy as np
import torch

THREADS = 2
torch.set_num_threads(THREADS)

from fairquant.onnx_int8 import (export_onnx, preprocess_onnx, quantize_int8, onnx_session, run_onnx, time_sessions,
                                 CalibReader, optimized_graph, float_weight_ops)

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


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


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--repeats', type=int, default=5, help='timed runs per session at batch 32 (median kept)')
    p.add_argument('--repeats1', type=int, default=20, help='timed runs per session at batch 1')
    p.add_argument('--calib', type=int, default=8, help='calibration images (random, normalised)')
    p.add_argument('--out', default=None, help='keep the ONNX files here (default: a temp folder, removed)')
    a = p.parse_args()
    t_start = time.time()
    tmp = tempfile.TemporaryDirectory(prefix='fq_int8_speed_')
    d = Path(a.out or tmp.name); d.mkdir(parents=True, exist_ok=True)
    classes, groups = [f'c{i}' for i in range(1000)], ['all']
    calib = CalibReader([images(8, s) for s in range(max(1, a.calib // 8))])
    files, recipes = {}, {}
    for name in ['resnet18', 'vit']:
        m, dc = build(name)
        fp = export_onnx(m, d/f'{name}-fp32.onnx', classes, groups, dc, 'random-weights', '0'*64)
        files[f'{name}_fp32'] = fp
        del m
        pre = preprocess_onnx(fp, d/f'{name}-pre.onnx')   # once per model: (path, how)
        modes = [('static', {})] + ([('dynamic', {}), ('static_nofold', dict(fold_bias=False))] if name == 'vit' else [])
        for mode, opts in modes:
            f = d/f'{name}-int8-{mode}.onnx'
            t = time.time()
            recipes[f'{name}_{mode}'] = quantize_int8(fp, f, mode.split('_')[0], calib if mode.startswith('static') else None, pre, **opts)
            files[f'{name}_{mode}'] = f
            print(f'{name} {mode}: quantized in {time.time() - t:.1f}s', file=sys.stderr, flush=True)
    res = dict(threads=THREADS, onnxruntime=__import__('onnxruntime').__version__, torch=torch.__version__,
               cpu=platform.processor() or platform.machine(), models=dict(resnet18='torchvision resnet18, 224 px',
               vit='timm vit_small_patch16_224 (ViT-S/16), 224 px'))
    sizes = {k: f.stat().st_size for k, f in files.items()}
    res['size_ratio'] = round(max(sizes[k] / sizes[f"{k.split('_')[0]}_fp32"] for k in sizes if not k.endswith('fp32')), 4)
    res['size_ratios'] = {k: round(v / sizes[f"{k.split('_')[0]}_fp32"], 4) for k, v in sizes.items() if not k.endswith('fp32')}
    res['float_weight_ops_left'] = {k: len(float_weight_ops(optimized_graph(f))) for k, f in files.items() if not k.endswith('fp32')}
    res['bias_folded'] = {k: r.get('bias_folded', 0) for k, r in recipes.items()}
    x32, x1 = images(32, 100), images(1, 101)
    for name in ['resnet18', 'vit']:
        keys = [k for k in files if k.startswith(name + '_')]
        sess = {k: onnx_session(files[k], THREADS) for k in keys}
        ref = run_onnx(sess[f'{name}_fp32'], x32, 32)
        for k in keys:
            if k.endswith('fp32'): continue
            y = run_onnx(sess[k], x32, 32)
            res.setdefault('top1_agree', {})[k] = float((y.argmax(1) == ref.argmax(1)).mean())
            res.setdefault('rel_logit_err', {})[k] = round(float(np.abs(y - ref).max() / np.abs(ref).max()), 4)
        t32 = time_sessions(sess, x32, a.repeats, warmup=1)
        t1 = time_sessions(sess, x1, a.repeats1, warmup=3)
        for k in keys:
            res.setdefault('ms_b32', {})[k] = round(1000 * t32[k], 1); res.setdefault('ms_b1', {})[k] = round(1000 * t1[k], 2)
            if k.endswith('fp32'): continue
            res[k] = round(t32[f'{name}_fp32'] / t32[k], 3)
            res[f'{k}_b1'] = round(t1[f'{name}_fp32'] / t1[k], 3)
        print(f'{name}: ' + ', '.join(f'{k} {1000*t32[k]:.0f} ms' for k in keys), file=sys.stderr, flush=True)
    res['targets'] = dict(resnet18_static=2.5, vit_static=1.9, vit_dynamic=1.9, size_ratio=0.26)
    res['meets_targets'] = bool(res['resnet18_static'] >= 2.5 and res['vit_static'] >= 1.9 and res['vit_dynamic'] >= 1.9
                                and res['size_ratio'] <= 0.26)
    res['seconds'] = round(time.time() - t_start, 1)
    tmp.cleanup()
    print(json.dumps(res))


if __name__ == '__main__':
    main()

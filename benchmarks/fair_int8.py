"""Speed of per-layer, per-group localisation (fairquant.fair_int8.localise_onnx) against validating both models.

ResNet-18 (torchvision) and ViT-S/16 (timm) at 224 px, random weights, exported with `export_onnx` and quantized with
`quantize_int8` on its defaults (static). On the same N noise images with two groups: the baseline validates the FP32
and the INT8 model (logits of every image, `run_onnx`, batch 32); the method runs `localise_onnx` (one onnxruntime
model, `own_error_model`: the FP32 graph plus every quantized layer's INT8 nodes fed that layer's FP32 input alone,
error and signal energies summed per image inside onnxruntime; SQNR sums per group). Both in this one process,
2 intra-op threads, interleaved (baseline, method, baseline, method, ...), median of the repeats.
Also printed (stderr) and in the JSON: how many layers have their output requantization charged to them
(`out_requant`: those branches run onnxruntime's integer kernels), and the integer / float weight ops in the graph
onnxruntime runs for the localisation model.

Usage: .venv/bin/python benchmarks/fair_int8.py [--n 500] [--repeats 3] [--models resnet18,vit]
The last line of stdout is one JSON object: `ratio_<model>` = localisation time / validation time of both models
(target from the issue: <= 3 for 500 images), and the seconds of each.
"""
import argparse, json, platform, sys, tempfile, time
from pathlib import Path

import numpy as np
import torch

THREADS = 2
torch.set_num_threads(THREADS)

from fairquant.onnx_int8 import export_onnx, quantize_int8, onnx_session, run_onnx, CalibReader
from fairquant.fair_int8 import localise_onnx, quantized_layers, own_error_model, optimized_ops
from fairquant.onnx_int8 import load_onnx

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def build(name):
    "A random-weight classifier (10 classes) and its data config"
    torch.manual_seed(0)
    if name == 'resnet18':
        import torchvision
        m = torchvision.models.resnet18(weights=None, num_classes=10)
    else:
        import timm
        m = timm.create_model('vit_small_patch16_224', pretrained=False, num_classes=10)
    return m.eval(), dict(input_size=[3, 224, 224], mean=MEAN, std=STD, interpolation='bicubic', crop_pct=0.875)


def images(n, seed):
    "Normalised uniform-noise images"
    x = np.random.default_rng(seed).random((n, 3, 224, 224), dtype=np.float32)
    return ((x - np.array(MEAN, np.float32)[:, None, None]) / np.array(STD, np.float32)[:, None, None]).astype(np.float32)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--n', type=int, default=500, help='images (the issue: 500 validation images)')
    p.add_argument('--repeats', type=int, default=3, help='timed runs of each (median kept)')
    p.add_argument('--models', default='resnet18,vit', help='comma-separated: resnet18, vit')
    a = p.parse_args()
    t_start = time.time()
    tmp = tempfile.TemporaryDirectory(prefix='fq_fair_int8_')
    d = Path(tmp.name)
    classes, groups = [f'c{i}' for i in range(10)], ['g0', 'g1']
    x = images(a.n, 1)
    codes = (np.arange(a.n) % 5 == 0).astype(int)      # 20 % in group g1
    res = dict(threads=THREADS, n=a.n, repeats=a.repeats, onnxruntime=__import__('onnxruntime').__version__,
               cpu=platform.processor() or platform.machine())
    for name in a.models.split(','):
        m, dc = build(name)
        fp = export_onnx(m, d/f'{name}-fp32.onnx', classes, groups, dc, 'random-weights', '0'*64); del m
        q = d/f'{name}-int8.onnx'
        quantize_int8(fp, q, 'static', CalibReader([images(8, 7)]))
        f_m, q_m = load_onnx(fp), load_onnx(q)
        sf, sq = onnx_session(fp, THREADS), onnx_session(q, THREADS)
        P = own_error_model(q_m, f_m)
        requant = {str(bool(k)): int(v) for k, v in P['layers'].out_requant.value_counts().items()}
        ops = optimized_ops(P['model'])
        int_ops = {k: v for k, v in ops.items() if k in ('QLinearConv', 'QGemm', 'QLinearMatMul', 'MatMulIntegerToFloat', 'MatMulInteger', 'ConvInteger')}
        float_ops = {k: v for k, v in ops.items() if k in ('Conv', 'FusedConv', 'Gemm', 'MatMul', 'FusedMatMul', 'FusedGemm')}
        print(f'{name}: layers with their own output requantization {requant}; localisation graph runs {int_ops} integer and {float_ops} float ops', file=sys.stderr)
        for r in P['layers'].itertuples(): print(f'  {"requant" if r.out_requant else "       "} {r.layer}', file=sys.stderr)
        base, meth = [], []
        for r in range(a.repeats):
            t = time.perf_counter(); run_onnx(sf, x, 32); run_onnx(sq, x, 32); base.append(time.perf_counter() - t)
            t = time.perf_counter(); tab = localise_onnx(f_m, q_m, x, codes, groups, 32, THREADS, progress=False); meth.append(time.perf_counter() - t)
            print(f'{name} repeat {r}: validate both {base[-1]:.1f}s, localise {meth[-1]:.1f}s', file=sys.stderr, flush=True)
        res[f'{name}_layers'] = int(tab.layer.nunique())
        res[f'{name}_out_requant'] = requant
        res[f'{name}_localisation_ops'] = dict(integer=int_ops, float=float_ops)
        res[f'{name}_validate_both_s'] = round(float(np.median(base)), 3)
        res[f'{name}_localise_s'] = round(float(np.median(meth)), 3)
        res[f'ratio_{name}'] = round(float(np.median(meth) / np.median(base)), 3)
    res['seconds'] = round(time.time() - t_start, 1)
    tmp.cleanup()
    print(json.dumps(res))


if __name__ == '__main__':
    main()

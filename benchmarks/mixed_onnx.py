"""Mixed-precision (2/4/8-bit) runs exported to ONNX: file size against theory and FP32, and speed with the fast loader.

ResNet-18 (224 px) and ViT-Ti/16 (224 px), random weights (fine for size and speed; accuracy claims need QAT-trained
bits: see tests/test_mixed_onnx.py::test_fq_qat_run_exported), bits (2, 4, 8) assigned with levels 0.2/0.4/0.4 from
random importance scores. Per model:
  * weights_only, per-channel bits at levels 0.2/0.4/0.4: size vs theory and vs FP32, latency vs FP32 (fast loader);
  * int8_activations, per-tensor bits (whole layers) at levels 0.2/0.4/0.4 and at 0.1/0.1/0.8 (most layers 8-bit):
    latency vs FP32.
FP32 and every mixed session run in one process (2 intra-op threads), interleaved round by round with
`benchmarks/harness.py` (every session once per round, the order rotated by one each round, one warm-up round,
`ROUNDS` rounds). `speed_vs_fp32[k]` is FP32 time / session k's time within a round (above 1 = faster than FP32):
its median over the rounds, with the min and max over the rounds in `speed_vs_fp32_min` / `speed_vs_fp32_max`.
An A/A control runs beside them: `fp32_again`, a second session of the same FP32 file, whose `speed_vs_fp32` would
be 1 on a quiet machine; its spread is how far two identical sessions land apart in this run (on ResNet-18 the
weights-only session's kernels take the same time as FP32's in onnxruntime's profile: its folded weights are float).
Targets (issue 12, judged on the medians): file <= 1.15x theory; weights_only speed_vs_fp32 >= 0.9; int8_activations
faster than FP32 when most layers are 8-bit. Last stdout line: one JSON object (`make bench` appends it to
benchmarks/results.jsonl).
"""
import json, sys, tempfile, time, warnings
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(2)
warnings.filterwarnings('ignore')

from fairquant.finetune import build_model, model_spec
from fairquant.mixed_precision import assign_bits, quantize_model, quant_layers, weight_shape
from fairquant.onnx_int8 import export_onnx, load_session, onnx_session, run_onnx, CalibReader
from fairquant.mixed_onnx import export_mixed, mixed_size_report
from harness import interleaved, round_ratios, spread

CLASSES, GROUPS = [f'c{i}' for i in range(10)], ['g0', 'g1']
BATCH, ROUNDS = 8, 11


def quantized(name, gran, levels, seed=0):
    torch.manual_seed(seed)
    m = build_model(model_spec(name, 224), CLASSES, None, {'crop_pct': 1.0}).eval()
    g = torch.Generator().manual_seed(seed + 1)
    scores = {k: torch.rand(weight_shape(q), generator=g) for k, q in quant_layers(m).items()}
    quantize_model(m, assign_bits(scores, gran, (2, 4, 8), levels), gran)
    return m


def bench(name, td):
    dc = dict(input_size=(3, 224, 224), mean=(0.5,)*3, std=(0.5,)*3, crop_pct=1.0)
    torch.manual_seed(0)
    plain = build_model(model_spec(name, 224), CLASSES, None, {'crop_pct': 1.0}).eval()
    fp = export_onnx(plain, td/f'{name}-fp32.onnx', CLASSES, GROUPS, dc)
    x = np.random.default_rng(0).standard_normal((BATCH, 3, 224, 224)).astype(np.float32)
    calib = CalibReader([np.random.default_rng(i).standard_normal((8, 3, 224, 224)).astype(np.float32) for i in range(2)])
    out, files = dict(fp32_bytes=fp.stat().st_size), {}
    m = quantized(name, 'per_channel', (0.2, 0.4, 0.4))
    wo = td/f'{name}-wo.onnx'
    info = export_mixed(m, wo, CLASSES, GROUPS, dc, 'per_channel')
    with torch.no_grad(): ref = m(torch.from_numpy(x)).numpy()
    t0 = time.perf_counter(); s_wo = load_session(wo, 2); out['load_session_s'] = round(time.perf_counter() - t0, 3)
    got = run_onnx(s_wo, x)
    rep = mixed_size_report(wo)
    out.update(avg_bits=round(info['avg_bits'], 3), weights_only_bytes=wo.stat().st_size, theory_bytes=int(info['theory_bytes']['total']),
               file_vs_theory=round(wo.stat().st_size/info['theory_bytes']['total'], 4), size_vs_fp32=round(wo.stat().st_size/fp.stat().st_size, 4),
               graph_and_metadata_bytes=int(rep.loc['graph and metadata', 'file_bytes']),
               weights_only_max_abs_diff=float(np.abs(got - ref).max()), weights_only_top1_agree=float((got.argmax(1) == ref.argmax(1)).mean()))
    sess = {'fp32': onnx_session(fp, 2), 'fp32_again': onnx_session(fp, 2), 'weights_only': s_wo, 'weights_only_plain_session': onnx_session(wo, 2)}
    for tagname, levels in [('int8_act_levels_0.2_0.4_0.4', (0.2, 0.4, 0.4)), ('int8_act_levels_0.1_0.1_0.8', (0.1, 0.1, 0.8))]:
        mq = quantized(name, 'per_tensor', levels, seed=2)
        f = td/f'{name}-{tagname}.onnx'
        i8 = export_mixed(mq, f, CLASSES, GROUPS, dc, 'per_tensor', 'int8_activations', calib)
        sess[tagname] = load_session(f, 2)
        out[f'{tagname}_int8_layers'] = f"{len(i8['int8_activation_layers'])}/{len(quant_layers(mq))}"
        out[f'{tagname}_avg_bits'] = round(i8['avg_bits'], 3)
        out[f'{tagname}_size_vs_fp32'] = round(f.stat().st_size/fp.stat().st_size, 4)
    feed = {k: s.get_inputs()[0].name for k, s in sess.items()}
    t = interleaved({k: (lambda s=s, k=k: s.run(None, {feed[k]: x})) for k, s in sess.items()}, ROUNDS, warmup=1)
    out['ms_per_batch'] = {k: round(1000*float(np.median(v)), 1) for k, v in t.items()}
    sp = {k: spread('r', round_ratios(t, 'fp32', k), 3) for k in sess if k != 'fp32'}
    for suffix in ('', '_min', '_max'): out[f'speed_vs_fp32{suffix}'] = {k: v[f'r{suffix}'] for k, v in sp.items()}
    return out


def main():
    res = {}
    with tempfile.TemporaryDirectory(prefix='fq_bench_mixed_') as td:
        for name in ['resnet18', 'vit_tiny_patch16_224']:
            t0 = time.time(); res[name] = bench(name, Path(td)); res[name]['seconds'] = round(time.time() - t0, 1)
            print(name, res[name], file=sys.stderr)
    targets = {n: dict(file_le_1_15x_theory=r['file_vs_theory'] <= 1.15, weights_only_speed_ge_0_9=r['speed_vs_fp32']['weights_only'] >= 0.9,
                       int8_act_mostly_8bit_faster=r['speed_vs_fp32']['int8_act_levels_0.1_0.1_0.8'] > 1.0) for n, r in res.items()}
    print(json.dumps(dict(benchmark='mixed_onnx', batch=BATCH, threads=2, rounds=ROUNDS, results=res, targets_met=targets)))


if __name__ == '__main__':
    main()

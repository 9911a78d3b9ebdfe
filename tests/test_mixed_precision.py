"""End-to-end checks of stage 30 (`fairquant.mixed_precision`) on the worked example: every named configuration, the
matched controls and what they record, one definition of the numbers (`fairquant.metrics`, fairlearn), the test split
left to 50_validation, the runs index and its reader, the stage driver, and what the research code crashed on.
Slower than the notebook's own tests (a minute or two on 2 cores)."""
import json, math, pytest, torch
import numpy as np, pandas as pd
from dataclasses import asdict, replace
from safetensors.torch import load_file
import fastcore.test as ft   # not `from ... import test_eq`: pytest would collect it as a test
_eq, _close = ft.test_eq, ft.test_close
from fairquant.core import load_json, save_json, stage_dir
from fairquant.datasets import open_stage_dataset, save_stage_dataset
from fairquant.finetune import example_run, finetune_model, TrainConfig, update_index
from fairquant.metrics import group_metrics, table_codes, table_metrics
from fairquant.mixed_precision import (CONFIGS, SUMMARY_METRICS, TEST_NOT_COMPUTED, GRANULARITIES, GRANULARITY_UNITS, StageSettings,
                                       example_importance, get_config, load_quantized_checkpoint, read_runs, run_config, run_mixed_precision,
                                       stage_checkpoints, stage_config, update_runs, quantize_model, quant_layers, weight_shape, unit_shape,
                                       bit_distribution, size_report, layer_flops, model_bits, fake_quantize, quantizer, avg_bits,
                                       budget_assign, unit_scores, project_bits)
from fairquant.finetune import build_model, model_spec

FILES = ['training.log', 'fairquant_report.txt', 'bit_distribution.csv', 'size_report.txt', 'bitwidth_percentages.txt',
         'predictions.csv', 'summary.json']
KEYS = ['config', 'trains', 'reference', 'seed', 'granularity_units', 'avg_bits', 'size_mb', 'weights_mb', 'scales_mb', 'bitmap_mb', 'baseline_mb',
        'gops', 'weight_bit_gops', 'n_test', *SUMMARY_METRICS, 'loss']
GONE = ['EOpp0', 'EOpp1', 'EOdds', 'eo_classes', 'effective_gops']
BAQ_KEYS = ['bits_changed', 'bits_changed_params_pct', 'bits_mean_abs_change', 'learned_drift_mean_abs', 'learned_drift_max_abs',
            'learned_drift_std', 'rounded_bits_changed', 'rounded_avg_bits', 'final_finetune_steps']
ST = StageSettings(epochs=1, n_train=32, n_val=16, batch_size=16, target_avg_bits=4.0, rounds=2)

@pytest.fixture(scope='module')
def run(tmp_path_factory):
    rd = example_run(tmp_path_factory.mktemp('fq30')/'run')
    example_importance(rd, ('grape', 'hawq'))
    return rd

def _vit(rd): return [r for r in stage_checkpoints(rd) if r['tag'] == 'vit_mini'][0]
def _js(m): return json.dumps({k: m[k] for k in SUMMARY_METRICS}, sort_keys=True)   # NaN equal to NaN

def _check(rd, s, target):
    d = rd/'30_mixed_precision'/s['tag']/s['config']
    _eq([f for f in FILES if not (d/f).exists()], [])
    j = load_json(d/'summary.json')
    _eq([k for k in KEYS if k not in j], [])
    _eq([k for k in GONE if k in j], [])
    _eq((j['config'], j['trains'], j['reference']), (s['config'], get_config(s['config']).trains, get_config(s['config']).reference))
    if get_config(s['config']).needs_importance: _eq(s['avg_bits'] <= target + 1e-6, True)
    if get_config(s['config']).mode == 'baq_learnable': _eq([k for k in BAQ_KEYS if k not in j], [])
    _close(j['size_mb'], j['weights_mb'] + j['scales_mb'] + j['bitmap_mb'], eps=1e-12)
    _eq(j['granularity_units'], GRANULARITY_UNITS.get(j['granularity'], 'float32 weights, not quantized'))
    m, meta = load_quantized_checkpoint(d/s['checkpoint'])
    _eq(meta['config'], s['config'])
    _eq(all(0 <= v <= 1 for v in s['group_acc'].values()), True)

@pytest.mark.parametrize('config', CONFIGS.names)
def test_every_configuration(run, config):
    s = run_config(run, _vit(run), config, ST, progress=False); update_runs(run, s)
    _check(run, s, 4.0)
    if config == 'fairquantize':      # unprivileged = lowest val accuracy of the fine-tuned model, recorded
        acc = load_json(run/'10_finetune_vit_swin'/_vit(run)['sidecar'])['val_metrics']['group_acc']
        _eq(s['unprivileged'], min(acc, key=acc.get))
    if config == 'uniform8': _close(s['avg_bits'], 8.0)
    if config == 'fp32_ft': _close(s['avg_bits'], 32.0)

def test_reference_of_every_configuration():
    "fp32_ft is compared with the checkpoint (fp32); every other configuration that trains with fp32_ft; the rest with fp32"
    for n in CONFIGS.names:
        c = get_config(n)
        _eq((n, c.reference), (n, 'fp32' if n == 'fp32_ft' or not c.trains else 'fp32_ft'))
    _eq((get_config('fp32_ft').trains, get_config('fp32_ft').mode), (True, 'none'))
    _eq(sorted(n for n in CONFIGS.names if get_config(n).reference == 'fp32_ft'),
        ['fairgrape', 'fairquantize', 'fq_baq', 'fq_minimax_qat', 'fq_qat', 'fq_qat_blind', 'fq_qat_iter', 'fq_qat_nofair', 'hawq', 'uniform4_qat'])
    ft.test_fail(lambda: get_config('fp32'), contains="'fp32' is the fine-tuned checkpoint itself")

def test_nofair_differs_from_fq_qat_only_in_lambda():
    a, b = asdict(get_config('fq_qat_nofair')), asdict(get_config('fq_qat'))
    _eq({k: (a[k], b[k]) for k in a if k != 'name' and a[k] != b[k]}, {'fairness_lambda': (0.0, 0.5)})

def test_fairness_override_leaves_the_controls_alone():
    s = StageSettings(fairness_lambda=2.0)
    _eq({n: stage_config(n, s).fairness_lambda for n in CONFIGS.names},
        {n: (2.0 if get_config(n).fairness_lambda > 0 else 0.0) for n in CONFIGS.names})
    _eq(stage_config('fq_qat_nofair', s).fairness_lambda, 0.0)
    for bad in (0, 0.0, -1, float('nan')):
        ft.test_fail(lambda: StageSettings(fairness_lambda=bad), contains="fq_qat equal fq_qat_nofair")

def test_fp32_ft_trains(run):
    "fp32_ft: trained (weights moved, one val block per epoch), no quantizer, reference fp32; the checkpoint's own weights untouched"
    st = replace(ST, epochs=2)
    s = run_config(run, _vit(run), 'fp32_ft', st, progress=False)
    d = run/'30_mixed_precision'/'vit_mini'/'fp32_ft'
    j = load_json(d/'summary.json')
    _eq((j['trains'], j['reference'], j['mode'], j['granularity'], j['fairness_lambda']), (True, 'fp32', 'none', 'fp32', 0.0))
    log = (d/'training.log').read_text()
    _eq([f'[FP32 FT] Epoch {e}/2 (val)' in log for e in (1, 2)], [True, True])
    w = load_file(str(d/s['checkpoint']))
    base = load_file(str(run/'10_finetune_vit_swin'/_vit(run)['weights']))
    _eq([k for k in w if k.startswith('fq_bits/')], [])
    _eq(any(not torch.equal(w[k], base[k]) for k in base), True)

def test_test_predictions_false(run):
    "test_predictions=False: no predictions.csv, no test metrics (summary says why), the same checkpoint tensors, bits and size"
    out = {}
    for tp in (True, False):
        s = run_config(run, _vit(run), 'fq_qat', replace(ST, test_predictions=tp), progress=False)
        d = run/'30_mixed_precision'/'vit_mini'/'fq_qat'
        out[tp] = (load_json(d/'summary.json'), load_file(str(d/s['checkpoint'])), (d/'predictions.csv').exists(), (d/'training.log').read_text())
    (a, wa, pa, la), (b, wb, pb, lb) = out[True], out[False]
    _eq((pa, pb), (True, False))
    _eq((b['test_predictions'], b['test_metrics']), (False, TEST_NOT_COMPUTED))
    _eq([k for k in ('n_test', 'loss', *SUMMARY_METRICS) if k in b], [])
    _eq(('FINAL RESULTS: fq_qat' in la, 'FINAL RESULTS' in lb), (True, False))
    _eq(sorted(wa), sorted(wb))
    _eq([k for k in wa if not torch.equal(wa[k], wb[k])], [])
    _eq({k: b[k] for k in ('avg_bits', 'size_mb', 'levels', 'assigned_avg_bits')}, {k: a[k] for k in ('avg_bits', 'size_mb', 'levels', 'assigned_avg_bits')})

def test_summary_numbers_are_the_metrics_of_its_predictions(run):
    "summary.json's numbers are fairquant.metrics.group_metrics of the predictions in predictions.csv (5 classes, 2 groups)"
    ds = open_stage_dataset(run)
    for c in ('uniform4', 'fq_qat_nofair'):
        s = run_config(run, _vit(run), c, ST, ds, progress=False)
        d = run/'30_mixed_precision'/'vit_mini'/c
        p = pd.read_csv(d/'predictions.csv', dtype=str)
        _eq(_js(load_json(d/'summary.json')), _js(group_metrics(*table_codes(p, ds.classes, ds.groups), ds.classes, ds.groups)))
        _eq(math.isfinite(s['eodds_pp']), True)

@pytest.fixture(scope='module')
def binary_run(run, tmp_path_factory):
    "The worked example's images as a binary task (shape 0 or 1 vs the rest), one resnet18 fine-tuned on it (vit_mini predicts one class)"
    ds = open_stage_dataset(run)
    t = ds.table.assign(label=ds.table.label.isin([0, 1]).astype(int))
    bds = type(ds)('synthetic', ds.root, ['other', 'first two'], ds.groups, t, ds.options)
    rd = tmp_path_factory.mktemp('fq30bin')/'run'; save_stage_dataset(bds, rd)
    out = stage_dir(rd, '10_finetune_vit_swin')
    update_index(out, finetune_model(bds, 'resnet18', TrainConfig(epochs=3, batch_size=32, lr=2e-3, select='overall', seed=0), out, 32, None,
                                     {'crop_pct': 1.0}, progress=False))
    return rd

def test_eodds_is_fairlearns_on_a_binary_task(binary_run):
    "eodds_pp = 100 × fairlearn's equalized_odds_difference (the larger of the TPR and FPR gaps), not the research code's sum"
    from fairlearn.metrics import equalized_odds_difference, true_positive_rate_difference, false_positive_rate_difference
    ds = open_stage_dataset(binary_run)
    row = stage_checkpoints(binary_run)[0]
    s = run_config(binary_run, row, 'uniform8', replace(ST, epochs=0), ds, progress=False)
    p = pd.read_csv(binary_run/'30_mixed_precision'/row['tag']/'uniform8'/'predictions.csv', dtype=str)
    y, yh, g = table_codes(p, ds.classes, ds.groups)
    tpr, fpr = (100*f(y, yh, sensitive_features=g) for f in (true_positive_rate_difference, false_positive_rate_difference))
    _eq(min(tpr, fpr) > 0, True)                                   # both gaps non-zero: the sum and the max differ
    j = load_json(binary_run/'30_mixed_precision'/row['tag']/'uniform8'/'summary.json')
    _close(j['eodds_pp'], 100*equalized_odds_difference(y, yh, sensitive_features=g), eps=1e-9)
    _close(j['eodds_pp'], max(tpr, fpr), eps=1e-9)
    _eq(abs(j['eodds_pp'] - (tpr + fpr)) > 1e-6, True)
    _eq(_js(j), _js(table_metrics(p, ds.classes, ds.groups)))

def test_reference_crashes_work(run):
    "Iterative per_tensor, BAQ per_param and BAQ with the subtractive reducer crashed in the research code"
    for config, granularity, over in [('fq_qat_iter', 'per_tensor', {}), ('fq_baq', 'per_param', {}),
                                      ('fq_baq', 'per_channel', {'reducer': 'subtractive'}), ('fq_qat_iter', 'per_param', {})]:
        st = replace(ST, granularity=granularity)
        s = run_config(run, _vit(run), get_config(config, **over), st, progress=False)
        _check(run, s, 4.0)
        _eq(s['granularity'], granularity)

def test_all_in_index(run):
    for c in CONFIGS.names:
        if not (run/'30_mixed_precision'/'vit_mini'/c).exists(): update_runs(run, run_config(run, _vit(run), c, ST, progress=False))
    rows = read_runs(run, CONFIGS.names, ['vit_mini'])
    _eq({r['config'] for r in rows} >= set(CONFIGS.names), True)
    _eq({r['folder'] for r in rows if r['config'] in CONFIGS.names}, {f'vit_mini/{c}' for c in CONFIGS.names})
    _eq('dir' in load_json(run/'30_mixed_precision'/'runs.json')['runs'][0], False)
    ft.test_fail(lambda: read_runs(run, ['fp32']), contains="runs.json: config(s) ['fp32'] not in this file, which has")
    ft.test_fail(lambda: read_runs(run, tags=['swin_mini']), contains="tag(s) ['swin_mini'] not in this file, which has ['vit_mini'")

def test_driver(run, tmp_path):
    "run_mixed_precision: refuses missing maps before any work; with test_predictions=False no fp32 evaluation, no figure, no metrics"
    import shutil
    bare = tmp_path/'bare'; shutil.copytree(run/'00_datasets', bare/'00_datasets'); shutil.copytree(run/'10_finetune_vit_swin', bare/'10_finetune_vit_swin')
    ft.test_fail(lambda: run_mixed_precision(bare, ['uniform4', 'fq_qat_nofair'], progress=False), contains="needed by 30_mixed_precision (fq_qat_nofair)")
    _eq((bare/'30_mixed_precision').exists(), False)
    r = run_mixed_precision(bare, 'uniform4,fp32_ft', ['vit_mini'], epochs=1, n_train=32, n_val=16, batch_size=16, test_predictions=False, progress=False)
    _eq((r['fp32'], r['figure'], [s['config'] for s in r['runs']]), ({}, None, ['uniform4', 'fp32_ft']))
    _eq([c for c in ('acc', 'eodds_pp') if c in r['table']], [])
    _eq([(x['config'], x['folder'], x['summary']['reference']) for x in read_runs(bare)],
        [('uniform4', 'vit_mini/uniform4', 'fp32'), ('fp32_ft', 'vit_mini/fp32_ft', 'fp32')])
    _eq([p.name for p in (bare/'30_mixed_precision'/'vit_mini').glob('*/predictions.csv')], [])
    r = run_mixed_precision(bare, ['uniform4'], ['vit_mini'], StageSettings(epochs=0), progress=False)
    _eq((r['fp32']['vit_mini']['config'], r['figure'].exists()), ('fp32', True))
    _eq(r['table'].config.tolist(), ['fp32', 'uniform4'])
    _eq(load_json(bare/'30_mixed_precision'/'finetuned_test.json')['vit_mini']['reference'], None)

def test_deterministic(run):
    "Same seed, same settings: the same predictions and numbers (CPU)"
    st = StageSettings(epochs=1, n_train=32, n_val=16, batch_size=16, seed=3)
    out = []
    for _ in range(2):
        s = run_config(run, _vit(run), 'fq_qat', st, progress=False)
        out.append(((run/'30_mixed_precision'/'vit_mini'/'fq_qat'/'predictions.csv').read_text(), s['acc'], s['avg_bits'], s['eodds_pp']))
    _eq(out[0], out[1])


def _baq_layers(run):
    "The worked example's vit_mini, its layer shapes and the fq_baq initial assignment (per channel, 4 bits) from its balanced GRAPE map"
    from fairquant.mixed_precision import load_scores, importance_file
    from fairquant.finetune import load_checkpoint
    ds, row, cfg = open_stage_dataset(run), _vit(run), get_config('fq_baq')
    ck = load_checkpoint(run/'10_finetune_vit_swin'/row['weights'])
    scores = load_scores(importance_file(run, row['tag'], cfg), cfg, ck.model, ds.groups)
    return scores, {k: weight_shape(m) for k, m in quant_layers(ck.model).items()}, cfg

def test_baq_projection_holds_the_budget(run):
    "Learned widths that all drifted up (rounding alone: far above 4 bits) are projected back: <= 4.0 within one channel's weight, ranking kept"
    scores, shapes, cfg = _baq_layers(run)
    b0, _, got0 = budget_assign(scores, 'per_channel', cfg.bits, 4.0, cfg.levels)
    g = torch.Generator().manual_seed(0)
    learned = {k: (b.double() + 0.4 + 0.9*torch.rand(b.shape, generator=g, dtype=torch.float64)).clamp(2, 8) for k, b in b0.items()}
    _eq(avg_bits({k: v.round() for k, v in learned.items()}, shapes) > 4.6, True)             # what plain rounding would give
    fin, _, got = project_bits(learned, shapes, 'per_channel', cfg.bits, 4.0, cfg.levels, unit_scores(scores, 'per_channel'))
    n, unit = sum(math.prod(s) for s in shapes.values()), max(math.prod(s[1:]) for s in shapes.values())
    _close(avg_bits(fin, shapes), got, eps=1e-12)
    _eq(4.0 - unit*1/n <= got <= 4.0, True)                          # 2..8 bits: neighbouring widths differ by 1 bit
    l, f = torch.cat([learned[k] for k in b0]), torch.cat([fin[k] for k in b0])
    _eq(bool(((l[:, None] > l[None, :]) & (f[:, None] < f[None, :])).any()), False)
    _eq(sorted(set(f.tolist())) <= list(cfg.bits), True)

def test_baq_run_is_held_to_the_budget(run):
    "End to end: bits clamped up to >= 6 while learning (rounding alone: >= 6 bits) end at <= 4.0; the summary records what moved; fine-tuned at the final bits"
    import warnings
    st = replace(ST, test_predictions=False, baq_final_epochs=0.5, bit_lr=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        s = run_config(run, _vit(run), get_config('fq_baq', bit_min=6), st, progress=False)
    d = run/'30_mixed_precision'/'vit_mini'/'fq_baq'
    j = load_json(d/'summary.json')
    _eq(j['rounded_avg_bits'] >= 6.0, True)
    scores, shapes, cfg = _baq_layers(run)
    n, unit = sum(math.prod(v) for v in shapes.values()), max(math.prod(v[1:]) for v in shapes.values())
    _eq(4.0 - unit/n <= j['avg_bits'] <= 4.0, True)
    _eq((j['bits_changed'] > 0, j['final_finetune_steps']), (True, math.ceil(0.5*math.ceil(32/16))))
    _eq('[BAQ final bits] Epoch 1/1 (val)' in (d/'training.log').read_text(), True)
    m, meta = load_quantized_checkpoint(d/s['checkpoint'])
    _close(avg_bits(meta['bits'], shapes), j['avg_bits'], eps=1e-12)
    _eq(sorted(set(torch.cat([b.reshape(-1) for b in meta['bits'].values()]).tolist())) <= list(range(2, 9)), True)

def test_baq_without_training_keeps_the_initial_bits(run):
    "epochs=0: nothing learned, the projection returns the initial assignment exactly (bits_changed 0, avg_bits = assigned_avg_bits)"
    s = run_config(run, _vit(run), 'fq_baq', replace(ST, epochs=0, test_predictions=False), progress=False)
    _eq((s['bits_changed'], s['rounded_bits_changed'], s['final_finetune_steps']), (0, 0, 0))
    _close(s['avg_bits'], s['assigned_avg_bits'], eps=1e-12)

def _slow_size_bits(model, gran):
    "Independent count, channel by channel: integers at their bits, a float32 scale per channel with a quantized weight, the bit map"
    total = 0
    for k, m in quant_layers(model).items():
        w = m.parametrizations.weight.original if quantizer(m) is not None else m.weight
        if quantizer(m) is None: total += 32*w.numel(); continue
        b = quantizer(m).bits
        full = b.reshape(-1)[0].expand(w.shape) if gran == 'per_tensor' else b.reshape((-1,) + (1,)*(w.ndim - 1)).expand(w.shape) if gran == 'per_channel' else b
        for c in range(w.shape[0]):
            vals = full[c].reshape(-1).tolist()
            total += sum(vals) + (32 if any(1 <= v <= 16 for v in vals) else 0)
        widths = sorted(set(b.reshape(-1).tolist()))
        total += 8*len(widths) + (math.ceil(math.log2(len(widths)))*b.numel() if len(widths) > 1 else 0)
    return total

@pytest.mark.parametrize('gran', GRANULARITIES)
def test_size_mb_is_an_independent_count(gran):
    "size_mb = integers at their bits + one float32 scale per output channel not wholly pruned + the bit map, counted independently"
    torch.manual_seed(0)
    m = build_model(model_spec('vit_mini', 32), ['a', 'b', 'c'])
    g, ch = torch.Generator().manual_seed(1), torch.tensor([0, 2, 3, 4, 8], dtype=torch.int8)
    bits = {k: ch[torch.randint(0, len(ch), unit_shape(weight_shape(l), gran), generator=g)] for k, l in quant_layers(m).items()}
    first = next(iter(bits)); bits[first][:] = 4                   # a layer at one width stores 1 byte of bit map
    last = list(bits)[-1]; del bits[last]                           # an unquantized (float32) layer
    quantize_model(m, bits, gran)
    _, tot = size_report(bit_distribution(m, gran), layer_flops(m, (3, 32, 32)))
    _close(tot['size_mb'], _slow_size_bits(m, gran)/8/1e6, eps=1e-12)
    n = sum(math.prod(weight_shape(l)) for l in quant_layers(m).values())
    _close(tot['weights_mb'], tot['avg_bits']*n/8/1e6, eps=1e-12)
    _close(tot['baseline_mb'], 32*n/8/1e6, eps=1e-12)

def test_per_tensor_is_one_bit_width_with_per_channel_scales(run):
    "per_tensor: one bit width per tensor, per-channel scales (as the ONNX export stores them); the run's summary says so"
    w = torch.randn(6, 5)*torch.logspace(-2, 0, 6)[:, None]
    _eq(fake_quantize(w, torch.tensor([3]), 'per_tensor'), fake_quantize(w, torch.full((6,), 3), 'per_channel'))
    s = run_config(run, _vit(run), 'fq_qat', replace(ST, granularity='per_tensor', test_predictions=False), progress=False)
    _eq(s['granularity_units'], 'one bit width per tensor, one float32 scale per output channel')
    _eq('granularity per_tensor: one bit width per tensor, one float32 scale per output channel' in
        (run/'30_mixed_precision'/'vit_mini'/'fq_qat'/'size_report.txt').read_text(), True)

def test_failed_rerun_keeps_the_finished_result(run, monkeypatch):
    "run_config builds a result beside the finished one and swaps: a rerun that fails leaves the old folder whole, and no temporary"
    import fairquant.mixed_precision as mp
    update_runs(run, run_config(run, _vit(run), 'uniform4', ST, progress=False))
    d = run/'30_mixed_precision'/'vit_mini'/'uniform4'
    before = {f.name: f.read_bytes() for f in d.iterdir()}
    def boom(*a, **k): raise RuntimeError('killed mid-run')
    monkeypatch.setattr(mp, 'quantize_for', boom)
    ft.test_fail(lambda: run_config(run, _vit(run), 'uniform4', ST, progress=False), contains='killed mid-run')
    _eq({f.name: f.read_bytes() for f in d.iterdir()}, before)
    _eq([p.name for p in d.parent.iterdir() if p.name.startswith('.')], [])

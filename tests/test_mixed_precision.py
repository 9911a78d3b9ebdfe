"""End-to-end checks of stage 30 (`fairquant.mixed_precision`) on the worked example: every named configuration,
and what the research code crashed on. Slower than the notebook's own tests (about a minute on 2 cores)."""
import math, pytest, torch
import fastcore.test as ft   # not `from ... import test_eq`: pytest would collect it as a test
_eq, _close = ft.test_eq, ft.test_close
from fairquant.core import load_json
from fairquant.finetune import example_run
from fairquant.mixed_precision import (CONFIGS, StageSettings, example_importance, get_config, load_quantized_checkpoint,
                                       run_config, stage_checkpoints, update_runs)

FILES = ['training.log', 'fairquant_report.txt', 'bit_distribution.csv', 'size_report.txt', 'bitwidth_percentages.txt',
         'predictions.csv', 'summary.json']
KEYS = ['config', 'seed', 'avg_bits', 'size_mb', 'gops', 'effective_gops', 'acc', 'group_acc', 'worst_group_acc', 'gap_pp',
        'macro_recall', 'EOpp0', 'EOpp1', 'EOdds']

@pytest.fixture(scope='module')
def run(tmp_path_factory):
    rd = example_run(tmp_path_factory.mktemp('fq30')/'run')
    example_importance(rd, ('grape', 'hawq'))
    return rd

def _vit(rd): return [r for r in stage_checkpoints(rd) if r['tag'] == 'vit_mini'][0]

def _check(rd, s, target):
    d = rd/'30_mixed_precision'/s['tag']/s['config']
    _eq([f for f in FILES if not (d/f).exists()], [])
    _eq([k for k in KEYS if k not in s], [])
    _eq(load_json(d/'summary.json')['config'], s['config'])
    if get_config(s['config']).needs_importance: _eq(s['avg_bits'] <= target + 1e-6, True)
    m, meta = load_quantized_checkpoint(d/s['checkpoint'])
    _eq(meta['config'], s['config'])
    _eq(all(0 <= v <= 1 for v in s['group_acc'].values()), True)

@pytest.mark.parametrize('config', CONFIGS.names)
def test_every_configuration(run, config):
    st = StageSettings(epochs=1, n_train=32, n_val=16, batch_size=16, target_avg_bits=4.0, rounds=2)
    s = run_config(run, _vit(run), config, st, progress=False); update_runs(run, s)
    _check(run, s, 4.0)
    if config == 'fairquantize':      # unprivileged = lowest val accuracy of the fine-tuned model, recorded
        acc = load_json(run/'10_finetune_vit_swin'/_vit(run)['sidecar'])['val_metrics']['group_acc']
        _eq(s['unprivileged'], min(acc, key=acc.get))
    if config == 'uniform8': _close(s['avg_bits'], 8.0)
    if config == 'fp32': _close(s['avg_bits'], 32.0)

@pytest.mark.parametrize('config,granularity,over', [('fq_qat_iter', 'per_tensor', {}), ('fq_baq', 'per_param', {}),
                                                     ('fq_baq', 'per_channel', {'reducer': 'subtractive'}),
                                                     ('fq_qat_iter', 'per_param', {})])
def test_reference_crashes_work(run, config, granularity, over):
    "Iterative per_tensor, BAQ per_param and BAQ with the subtractive reducer crashed in the research code"
    st = StageSettings(epochs=1, n_train=32, n_val=16, batch_size=16, granularity=granularity, rounds=2)
    cfg = get_config(config, **over)
    s = run_config(run, _vit(run), cfg, st, progress=False)
    _check(run, s, 4.0)
    _eq(s['granularity'], granularity)

def test_all_in_index(run):
    idx = load_json(run/'30_mixed_precision'/'runs.json')['runs']
    _eq({r['config'] for r in idx} >= set(CONFIGS.names), True)

def test_deterministic(run):
    "Same seed, same settings: the same predictions and numbers (CPU)"
    st = StageSettings(epochs=1, n_train=32, n_val=16, batch_size=16, seed=3)
    out = []
    for _ in range(2):
        s = run_config(run, _vit(run), 'fq_qat', st, progress=False)
        out.append(((run/'30_mixed_precision'/'vit_mini'/'fq_qat'/'predictions.csv').read_text(), s['acc'], s['avg_bits'], s['EOdds']))
    _eq(out[0], out[1])

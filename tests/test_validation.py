"""50_validation under a real kill: a process SIGKILLed right after its second chunk (no cleanup, no `finally`) leaves
a partial folder; a fresh process resumes from it and writes a CSV byte-identical to an uninterrupted run's."""
import signal, subprocess, sys, textwrap

SCRIPT = textwrap.dedent('''
    import os, signal, sys
    from pathlib import Path
    from fairquant.finetune import example_run
    from fairquant.datasets import open_stage_dataset
    from fairquant.validation import validate
    run, out, kill_after = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    if not (run/'00_datasets').exists(): example_run(run)
    ds = open_stage_dataset(run)
    ck = run/'10_finetune_vit_swin'/'vit_mini'/'vit_mini_synthetic.safetensors'
    def cb(done, total):
        if done == kill_after: os.kill(os.getpid(), signal.SIGKILL)
    validate(ck, ds, 'test', out, batch_size=8, chunk_batches=2, progress=False, callback=cb if kill_after else None)
''')


def _run(*args):
    return subprocess.run([sys.executable, '-c', SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=600)


def test_sigkill_then_resume_gives_identical_csv(tmp_path):
    run = tmp_path/'run'
    full = _run(run, tmp_path/'full'/'v.csv', 0)
    assert full.returncode == 0, full.stderr[-2000:]
    killed = _run(run, tmp_path/'killed'/'v.csv', 2)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-2000:])
    part = tmp_path/'killed'/'v.partial'
    assert sorted(p.name for p in part.iterdir()) == ['chunk_00000.npy', 'chunk_00001.npy', 'key.json']
    assert not (tmp_path/'killed'/'v.csv').exists()
    again = _run(run, tmp_path/'killed'/'v.csv', 0)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (tmp_path/'killed'/'v.csv').read_bytes() == (tmp_path/'full'/'v.csv').read_bytes()
    assert not part.exists()


# ------------------------------------------------------------------ run names, matched references, one definition of the numbers
import io, contextlib, json, shutil

import pytest


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    "An example run with vit_mini exported by stage 40 (FP32 + dynamic INT8) and two stage-30 runs of a 4-bit vit_mini"
    import torch
    from fairquant.core import save_json, stage_dir
    from fairquant.datasets import open_stage_dataset, build_transform
    from fairquant.finetune import example_run, load_checkpoint
    from fairquant.mixed_precision import quantize_model, uniform_bits, save_quantized_checkpoint
    from fairquant.onnx_int8 import convert_checkpoint, write_models_index
    run = example_run(tmp_path_factory.mktemp('val')/'run')
    ds, ck = open_stage_dataset(run), run/'10_finetune_vit_swin'/'vit_mini'/'vit_mini_synthetic.safetensors'
    c = load_checkpoint(ck)
    val = ds.torch_dataset('val', build_transform(c.data_config))
    d40 = stage_dir(run, '40_onnx_int8')
    write_models_index(d40, convert_checkpoint(ck, d40, torch.stack([val[i][0] for i in range(8)]), dynamic=True))
    q = c.model; quantize_model(q, uniform_bits(q, 4, 'per_channel'), 'per_channel')
    d30, runs = run/'30_mixed_precision', []
    for config, ref in (('uniform4', 'fp32'), ('fq_qat', 'fp32_ft')):   # fq_qat trains: its control is FP32 retrained the same way
        w, _ = save_quantized_checkpoint(q, d30/'vit_mini'/config/f'vit_mini_{config}', ds.classes, ds.groups, c.data_config, 'per_channel', config)
        save_json(dict(config=config, tag='vit_mini', reference=ref, checkpoint=w.name, avg_bits=4.0), w.parent/'summary.json')
        runs.append(dict(tag='vit_mini', config=config, folder=f'vit_mini/{config}', summary=dict(config=config, reference=ref, avg_bits=4.0)))
    save_json(dict(runs=runs), d30/'runs.json')
    return run, ds


def test_every_control_has_its_own_name(folder):
    from fairquant.validation import find_models
    run, _ = folder
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf): m = find_models(run)
    got = dict(zip(m.run, zip(m.kind, m.baseline)))
    assert got == {'vit_mini-fp32': ('checkpoint', None), 'vit_mini-onnx-fp32': ('onnx', 'vit_mini-fp32'),
                   'vit_mini-int8-dynamic': ('onnx', 'vit_mini-onnx-fp32'),   # INT8's matched control: same weights, same runtime
                   'vit_mini-uniform4': ('mixed', 'vit_mini-fp32'), 'vit_mini-fq_qat': ('mixed', 'vit_mini-fp32_ft'),
                   'resnet18-fp32': ('checkpoint', None)}
    assert not any('torch-fp32' in r for r in m.run)
    assert "vit_mini-fq_qat: its matched control 'vit_mini-fp32_ft' is not in" in buf.getvalue()
    assert "configuration 'fp32_ft'" in buf.getvalue()


def test_runs_json_numbers_are_fairquant_metrics(folder):
    from fairquant.core import load_json, read_csv
    from fairquant.metrics import table_metrics
    from fairquant.validation import validate_runs
    run, ds = folder
    with contextlib.redirect_stdout(io.StringIO()):
        validate_runs(run, runs=['vit_mini-fp32', 'vit_mini-onnx-fp32', 'vit_mini-fq_qat'], batch_size=32, progress=False)
    entries = {e['run']: e for e in load_json(run/'50_validation'/'runs.json')['runs']}
    assert entries['vit_mini-fq_qat']['baseline'] == 'vit_mini-fp32_ft'
    # bits read from the stage that made each model (checkpoint: 32; ONNX: 40's models.json; stage 30: its summary.json)
    assert {r: e['avg_bits'] for r, e in entries.items()} == {'vit_mini-fp32': 32.0, 'vit_mini-onnx-fp32': 32.0, 'vit_mini-fq_qat': 4.0}
    for e in entries.values():
        m = table_metrics(read_csv(run/'50_validation'/e['csv'], dtype={'image_id': str}), ds.classes, ds.groups)
        assert e['worst_group'] == m['worst_group'] and e['group_n'] == m['group_n']
        for k in ('eodds_pp', 'gap_pp', 'acc', 'worst_group_acc'):
            assert e[k] == pytest.approx(m[k], abs=1e-12, nan_ok=True), k
    a, b = (read_csv(run/'50_validation'/f'{r}.csv') for r in ('vit_mini-fp32', 'vit_mini-onnx-fp32'))
    assert (a.top1_pred == b.top1_pred).all()      # the export and its checkpoint: two names, the same predictions

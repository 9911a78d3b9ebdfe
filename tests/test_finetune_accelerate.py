"""Fine-tuning under HF Accelerate with two CPU processes, and the plain command line, as subprocesses.

`accelerate launch --multi_gpu --num_processes 2 -m fairquant.finetune ...` on a machine without GPUs starts two CPU
processes (torchrun + gloo; `accelerate launch --cpu --num_processes 2` alone would start only one). They must run
the same loop data-parallel and
leave a checkpoint that `load_checkpoint` accepts, with val metrics that match the per-image predictions it saved.
"""
import json, os, socket, subprocess, sys
from pathlib import Path

import pandas as pd
import pytest

from fairquant.core import load_json
from fairquant.datasets import get_dataset, save_stage_dataset
from fairquant.finetune import load_checkpoint, val_group_table
from fairquant.metrics import group_metrics

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _run_dir(tmp_path: Path, n: int = 240) -> Path:
    run = tmp_path / 'run'
    save_stage_dataset(get_dataset('synthetic', tmp_path / 'synth', n=n, seed=0), run)
    return run


ARGS = ['--model', 'swin_mini', '--img_size', '32', '--crop_pct', '1.0', '--epochs', '2', '--batch_size', '16',
        '--eval_batch_size', '16', '--save_every', '3']


def _check_outputs(run: Path, world: int):
    stage = run / '10_finetune_vit_swin'
    idx = load_json(stage / 'checkpoints.json')['checkpoints']
    assert [c['tag'] for c in idx] == ['swin_mini']
    ck = load_checkpoint(stage / idx[0]['weights'])          # verifies header, shapes and SHA-256
    meta = ck.meta
    assert meta['world_size'] == world
    assert len(meta['history']) == 2
    assert ck.classes == ['disc', 'ring', 'cross', 'striped_disc', 'dot_cluster'] and ck.groups == ['light', 'dark']
    preds = pd.read_csv(stage / 'swin_mini' / 'val_predictions.csv', dtype={'image_id': str})
    # every val image predicted exactly once: gather_for_metrics dropped the padding duplicates
    assert len(preds) == meta['dataset']['used']['val'] and preds.image_id.is_unique
    images = pd.read_csv(run / '00_datasets' / 'images.csv', dtype={'image_id': str})
    assert set(preds.image_id) <= set(images.query("split == 'val'").image_id)
    # the loop's per-group metrics of the selected epoch equal a direct computation from the saved predictions
    best = meta['history'][meta['selection']['best_epoch'] - 1]
    table = val_group_table(preds, ck.classes, ck.groups).set_index('group')
    for g in ck.groups:
        assert abs(table.accuracy[g] - best[f'val_acc[{g}]']) < 1e-12
    assert abs(table.accuracy['all'] - meta['val_metrics']['acc']) < 1e-12
    # ... and the sidecar's val metrics are fairquant.metrics' numbers of those predictions (one definition)
    m = group_metrics(preds.label, preds.pred, preds.group, ck.classes, ck.groups)
    for k in ('acc', 'worst_group_acc', 'macro_recall', 'gap_pp'):
        assert abs(meta['val_metrics'][k] - m[k]) < 1e-12, (k, meta['val_metrics'][k], m[k])
    assert abs(best['val_worst_group_acc'] - m['worst_group_acc']) < 1e-12 and abs(best['val_macro_recall'] - m['macro_recall']) < 1e-12
    assert not (stage / 'swin_mini' / 'resume').exists()     # resumable state removed after success
    return meta


def test_two_process_cpu(tmp_path):
    import torch
    if torch.cuda.is_available(): pytest.skip('a GPU is present: this test is about two CPU processes')
    run = _run_dir(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    cmd = [str(BIN / 'accelerate'), 'launch', '--multi_gpu', '--num_processes', '2', '--num_machines', '1',
           '--mixed_precision', 'no', '--dynamo_backend', 'no', '--main_process_port', str(_free_port()),
           '-m', 'fairquant.finetune', '--run_dir', str(run), *ARGS]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert r.returncode == 0, f'accelerate launch failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}'
    meta = _check_outputs(run, world=2)
    # only the main process wrote the summary line
    lines = [l for l in r.stdout.splitlines() if l.startswith('{')]
    assert len(lines) == 1 and json.loads(lines[0])['tag'] == 'swin_mini'
    assert meta['dataset']['used']['train'] == meta['dataset']['n']['train']
    assert meta['dataset']['used']['val'] == meta['dataset']['n']['val']


def test_plain_cli(tmp_path):
    run = _run_dir(tmp_path)
    cmd = [sys.executable, '-m', 'fairquant.finetune', '--run_dir', str(run), *ARGS, '--n_val', '20']
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert r.returncode == 0, f'python -m fairquant.finetune failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}'
    meta = _check_outputs(run, world=1)
    assert meta['dataset']['used']['val'] == 20


def test_cli_rejects_bad_option(tmp_path):
    r = subprocess.run([sys.executable, '-m', 'fairquant.finetune', '--run_dir', str(tmp_path), '--model', 'swin_mini',
                        '--select', 'loss'], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "unknown selection metric 'loss'" in r.stderr


def test_cli_refuses_run_folder_without_dataset(tmp_path):
    "A typo in --run_dir must not quietly generate a dataset and train on it"
    r = subprocess.run([sys.executable, '-m', 'fairquant.finetune', '--run_dir', str(tmp_path/'typo'), '--model', 'swin_mini'],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "typo: run folder not found" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path/'typo').exists()
    r = subprocess.run([sys.executable, '-m', 'fairquant.finetune', '--run_dir', str(tmp_path), '--model', 'swin_mini'],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "no output of stage 00_datasets" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path/'00_datasets').exists() and not (tmp_path/'10_finetune_vit_swin').exists()


def test_stage_launches_two_processes(tmp_path, capfd):
    """Stage 10's `processes: 2` (what a grid's params set): the stage launches accelerate itself with the model as
    JSON and every TrainConfig field, prints the launched output, and returns the row the launched main process wrote"""
    import torch
    from fairquant.finetune import TrainConfig, launch_finetune
    if torch.cuda.is_available(): pytest.skip('a GPU is present: this test is about two CPU processes')
    run = _run_dir(tmp_path)
    cfg = TrainConfig(epochs=2, batch_size=16, eval_batch_size=16, save_every=3)
    env = os.environ.get('OMP_NUM_THREADS')
    os.environ['OMP_NUM_THREADS'] = '1'
    try: row = launch_finetune(run, {'name': 'swin_mini', 'train': {'lr': 0.003}}, cfg, 2, img_size=32, crop_pct=1.0)
    finally:
        if env is None: os.environ.pop('OMP_NUM_THREADS', None)
        else: os.environ['OMP_NUM_THREADS'] = env
    assert 'swin_mini: accelerate launch on 2 processes' in capfd.readouterr().out
    meta = _check_outputs(run, world=2)
    assert row['tag'] == 'swin_mini' and meta['train_config']['lr'] == 0.003 and meta['train_config']['save_every'] == 3
    assert meta['train_config']['sampler'] == 'none'   # the launched processes parse the same config the stage holds

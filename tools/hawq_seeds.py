"""The hawq row of the over-seeds table (tools/seed_table.py): HAWQ importance with a smaller calibration (2 batches of 64,
2 probes; its double backward through attention is slow on 2 cores) on copies of runs/seeds/seed{0,1,2}, then the
hawq configuration. Run after tools/seed_table.py:  .venv/bin/python tools/hawq_seeds.py"""
import shutil, json, sys
from pathlib import Path
import torch
from fairquant.core import load_json
from fairquant.datasets import open_stage_dataset
from fairquant.importance import run_importance
from fairquant.mixed_precision import StageSettings, run_config, update_runs
torch.set_num_threads(2)
for s in (0, 1, 2):
    src, run = Path(f'runs/seeds/seed{s}'), Path(f'runs/seeds-hawq/seed{s}')
    for st in ('00_datasets', '10_finetune_vit_swin'):
        if not (run/st).exists(): shutil.copytree(src/st, run/st)
    if not (run/'20_importance'/'importance.json').exists():
        run_importance(run, metrics=['hawq'], n_batches=2, batch_size=64, hawq_samples=2, seed=s, progress=False)
    row = load_json(run/'10_finetune_vit_swin'/'checkpoints.json')['checkpoints'][0]
    r = run_config(run, row, 'hawq', StageSettings(epochs=1, batch_size=64, seed=s), open_stage_dataset(run), progress=False)
    print(json.dumps({k: r[k] for k in ('config', 'avg_bits', 'acc', 'worst_group_acc', 'gap_pp')}), flush=True)

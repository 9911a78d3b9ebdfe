"""Mixed-precision configurations over several seeds on the embedded default (synthetic, n=6000, the demo's
settings): per seed one run folder with the dataset, one fine-tuned model, its importance maps and every
configuration, made by the stages' own functions (what their notebooks call); then one table of average bits,
overall / worst-group accuracy and gap per configuration, mean ± sd over seeds. Usage:
    .venv/bin/python tools/seed_table.py --out runs/seeds --seeds 0 1 2 --model vit_mini
"""
import argparse, json
from pathlib import Path
import pandas as pd
import torch
from fairquant.core import PRESETS, save_csv, load_json
from fairquant.datasets import get_dataset, save_stage_dataset, open_stage_dataset
from fairquant.finetune import TrainConfig, finetune_model, update_index
from fairquant.importance import run_importance
from fairquant.mixed_precision import StageSettings, run_config, update_runs, evaluate_finetuned

CONFIGS = ['fp32', 'uniform8', 'uniform4', 'uniform4_qat', 'fairgrape', 'fairquantize', 'hawq', 'fq_qat', 'fq_qat_blind', 'fq_baq']
METRICS = {'hawq': 'hawq'}   # configs that need a map other than grape

def one_seed(run:Path, s:int, model, configs, epochs:int):
    metrics = sorted({'grape'} | {METRICS[c] for c in configs if c in METRICS})
    demo = PRESETS['demo']
    if not (run/'00_datasets'/'dataset.json').exists(): save_stage_dataset(get_dataset('synthetic', **demo['00_datasets']['options']), run)
    ds, ft = open_stage_dataset(run), demo['10_finetune_vit_swin']
    ck = run/'10_finetune_vit_swin'/'checkpoints.json'
    if not ck.exists():
        spec = next((m for m in ft['models'] if (m if isinstance(m, str) else m['name']) == model), model)
        cfg = TrainConfig(epochs=ft['epochs'], batch_size=ft['batch_size'], lr=ft['lr'], weight_decay=0.05, warmup_epochs=0.5,
                          grad_clip=1.0, select='worst_group', seed=s)
        update_index(ck.parent, finetune_model(ds, spec, cfg, ck.parent, 32, None, {'crop_pct': 1.0}, progress=False))
    if not (run/'20_importance'/'importance.json').exists():
        imp = demo['20_importance']
        run_importance(run, metrics=metrics, n_batches=imp['n_batches'], batch_size=imp['batch_size'], hawq_samples=4, seed=s, progress=False)
    row = load_json(ck)['checkpoints'][0]
    st = StageSettings(epochs=epochs, batch_size=demo['30_mixed_precision']['batch_size'], seed=s)
    out = [evaluate_finetuned(run, row, ds)]
    for c in configs:
        f = run/'30_mixed_precision'/row['tag']/c/'summary.json'
        if not f.exists(): update_runs(run, run_config(run, row, c, st, ds, progress=False))
        out.append(load_json(f))
    return out

def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--out', default='runs/seeds'); p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--model', default='vit_mini'); p.add_argument('--configs', nargs='+', default=CONFIGS)
    p.add_argument('--epochs', type=int, default=2)
    a = p.parse_args(); torch.set_num_threads(2)
    rows = []
    for s in a.seeds:
        for r in one_seed(Path(a.out).resolve()/f'seed{s}', s, a.model, a.configs, a.epochs):
            rows.append(dict(seed=s, **{k: r.get(k) for k in ('config', 'avg_bits', 'size_mb', 'acc', 'worst_group_acc', 'gap_pp', 'macro_recall')}))
        print(f'seed {s} done', flush=True)
    t = pd.DataFrame(rows); save_csv(t, Path(a.out)/'per_seed.csv')
    for c in ('acc', 'worst_group_acc', 'macro_recall'): t[c] = 100*t[c]
    gb = t.groupby('config', sort=False)
    g = gb[['avg_bits', 'acc', 'worst_group_acc', 'gap_pp']].agg(['mean', 'std'])
    tab = pd.DataFrame({k: [f"{m:.2f} ± {sd:.2f}" if k == 'avg_bits' else f"{m:.1f} ± {sd:.1f}" for m, sd in zip(g[(k, 'mean')], g[(k, 'std')])]
                        for k in ('avg_bits', 'acc', 'worst_group_acc', 'gap_pp')}, index=g.index)
    tab['seeds'] = gb.seed.count()
    save_csv(tab.reset_index(), Path(a.out)/'table.csv')
    print(tab.to_string())

if __name__ == '__main__': main()

"""Mixed-precision configurations over several seeds on the embedded default: one run folder per seed (stages 00 → 30
through papermill, as `fairquant-run` runs them), then one table of avg bits, overall / worst-group accuracy and gap
per configuration, mean ± sd over seeds. Usage:
    .venv/bin/python tools/seed_table.py --out runs/seeds --seeds 0 1 2 --model vit_mini
"""
import argparse, json, shutil
from pathlib import Path
import pandas as pd
from fairquant.core import run_pipeline, PRESETS, save_csv

CONFIGS = ['fp32', 'uniform8', 'uniform4', 'fairgrape', 'fairquantize', 'hawq', 'fq_qat', 'fq_baq']

def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--out', default='runs/seeds'); p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--model', default='vit_mini'); p.add_argument('--configs', nargs='+', default=CONFIGS)
    p.add_argument('--epochs', type=int, default=2); p.add_argument('--n', type=int, default=6000)
    p.add_argument('--extra30', default='{}', help='JSON dict of more 30_mixed_precision parameters')
    a = p.parse_args()
    out, demo = Path(a.out).resolve(), PRESETS['demo']
    ft = dict(demo['10_finetune_vit_swin'], export_dir=None)
    ft['models'] = [m for m in ft['models'] if (m if isinstance(m, str) else m['name']) == a.model] or [a.model]
    rows = []
    for s in a.seeds:
        run = out/f'seed{s}'
        if not (run/'30_mixed_precision'/'runs.json').exists():
            run_pipeline(run, ['00_datasets', '10_finetune_vit_swin', '20_importance', '30_mixed_precision'], {
                '00_datasets': demo['00_datasets'],
                '10_finetune_vit_swin': dict(ft, seed=s),
                '20_importance': dict(demo['20_importance'], metrics=['gradient', 'grape', 'hawq'], seed=s),
                '30_mixed_precision': dict(demo['30_mixed_precision'], configs=a.configs, epochs=a.epochs, seed=s, **json.loads(a.extra30))})
        for f in sorted((run/'30_mixed_precision').glob('*/*/summary.json')):
            r = json.loads(f.read_text()); rows.append(dict(seed=s, tag=f.parent.parent.name, **{k: r.get(k) for k in
                ('config', 'avg_bits', 'size_mb', 'acc', 'worst_group_acc', 'gap_pp', 'macro_recall')}))
    t = pd.DataFrame(rows); save_csv(t, out/'per_seed.csv')
    for c in ('acc', 'worst_group_acc', 'macro_recall'): t[c] = 100*t[c]
    g = t.groupby(['tag', 'config'], sort=False)[['avg_bits', 'acc', 'worst_group_acc', 'gap_pp']].agg(['mean', 'std'])
    tab = pd.DataFrame({k: [f"{m:.2f} ± {sd:.2f}" if k == 'avg_bits' else f"{m:.1f} ± {sd:.1f}" for m, sd in zip(g[(k, 'mean')], g[(k, 'std')])]
                        for k in ('avg_bits', 'acc', 'worst_group_acc', 'gap_pp')}, index=g.index)
    tab['seeds'] = t.groupby(['tag', 'config'], sort=False).seed.count().to_numpy()
    save_csv(tab.reset_index(), out/'table.csv')
    print(tab.to_markdown() if hasattr(tab, 'to_markdown') else tab.to_string())

if __name__ == '__main__': main()

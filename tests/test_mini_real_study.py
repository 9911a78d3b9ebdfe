"""A miniature real study (issue 19): a FairFace folder in the real layout (the official label CSVs' rows for a few dozen
ids, 224-px generated JPEGs) runs end to end through every stage from the FairFace study file with its root given on
the command line, a timm model built without hub weights at its own 224-px input size, and the real-scale defaults
for every parameter the derived study file does not shrink. Proves the real-scale path (paths, layout, sizes, labels)
without downloads; the numbers of a 1-epoch model on noise images mean nothing and are not checked. Marked slow (a
DeiT-Tiny at 224 px through every stage): `make test-slow` runs it; `make test` (CI) does not."""
import subprocess, sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from fairquant.core import reference_dir, load_json

ROOT = Path(__file__).resolve().parents[1]
REF = reference_dir()


def _fairface(root:Path, per_race:int=(10, 5))->Path:
    "The official CSVs cut to `per_race` ids per race (train, val) and one 224-px JPEG per id, tinted by race"
    meta = REF/'metadata'/'fairface'; root.mkdir(parents=True)
    for split, csv, n in (('train', meta/'fairface_label_train.csv', per_race[0]), ('val', meta/'variant_header_file_name'/'fairface_label_val.csv', per_race[1])):
        df = pd.read_csv(csv)
        df = df.groupby('race', group_keys=False).head(n)
        df.to_csv(root/f'fairface_label_{split}.csv', index=False)
        rng = np.random.default_rng(len(df))
        races = sorted(df.race.unique())
        for f, race in zip(df.iloc[:, 0], df.race):
            a = rng.integers(0, 255, (224, 224, 3), dtype=np.uint8); a[..., races.index(race) % 3] //= 2
            (root/f).parent.mkdir(parents=True, exist_ok=True); Image.fromarray(a).save(root/f, quality=90)
    return root


@pytest.mark.slow   # about 6 minutes on 2 idle cores (13 under load): `make test-slow`, not `make test`
@pytest.mark.skipif(REF is None, reason='shared/reference (the real FairFace label files) not found')
def test_fairface_study_runs_end_to_end_at_224(tmp_path):
    root = _fairface(tmp_path/'fairface')
    study = yaml.safe_load((ROOT/'studies'/'fairface_vit_swin.yaml').read_text())
    study['datasets'][0]['options']['val_fraction'] = 0.4   # 28 of the 70 train ids as val: enough to calibrate on
    study.update(name='fairface_mini', seeds=[0], configs=['fp32', 'fp32_ft', 'uniform4', 'fq_qat', 'int8_static', 'int8_fair'],
                 models=[dict(name='deit_tiny_patch16_224', tag='deit_tiny')])
    study['params'] = {'10_finetune_vit_swin': dict(pretrained=None, epochs=1, batch_size=16),   # no hub here; the rest real-scale
                       '20_importance': dict(split='val', n_batches=1, batch_size=16),
                       '30_mixed_precision': dict(epochs=1, batch_size=16),
                       '40_onnx_int8': dict(calib_split='val', calib_n=14, n_check=8),
                       '45_fair_int8': dict(n_boot=100),
                       '60_bias_analysis': dict(n_boot=100)}
    f = tmp_path/'fairface_mini.yaml'; f.write_text(yaml.safe_dump(study, sort_keys=False))
    g = tmp_path/'grid'
    r = subprocess.run([sys.executable, '-c', 'from fairquant.experiments import grid_cli; grid_cli()', str(f), '--root', 'fairface',
                        '--grid_dir', str(g), '--workers', '1', '--threads', '2', '--no-report', '--publish', str(tmp_path/'pub')],
                       cwd=tmp_path, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-3000:]
    s = pd.read_csv(g/'summary.csv')
    assert (s.status == 'done').all() and len(s) == 6
    assert set(s.n) == {35}                                                                     # the official val ids: our test split
    ds = load_json(g/'shared'/'fairface_race-s0'/'data'/'00_datasets'/'dataset.json')
    assert ds['identity']['groups'] == ds['identity']['classes'] and len(ds['identity']['groups']) == 7   # race as class and group
    ck = load_json(g/'shared'/'fairface_race-s0'/'deit_tiny'/'train'/'10_finetune_vit_swin'/'checkpoints.json')['checkpoints'][0]
    side = load_json(g/'shared'/'fairface_race-s0'/'deit_tiny'/'train'/'10_finetune_vit_swin'/ck['sidecar'])
    assert side['data_config']['input_size'] == [3, 224, 224] and side['data_config']['crop_pct'] == 0.9   # the model's own size and crop
    assert len(pd.read_csv(tmp_path/'pub'/'Final-output-CSV-Files'/'index.csv')) == 6

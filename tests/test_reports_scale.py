"""Reports that scale with the class count (issue 19 item 7): at 114 classes (Fitzpatrick17k) the bias analysis draws each
run's most-confused pairs and writes confused_pairs.csv instead of an unreadable 114 × 114 matrix; at 3 it draws the matrix."""
import numpy as np, pandas as pd
import pytest
from fairquant.bias import read_run_csvs, analyse, write_report, MAX_MATRIX_CLASSES


def _runs(d, n_classes, n=1500):
    rng = np.random.default_rng(0); C = [f'c{i:03d}' for i in range(n_classes)]; t = rng.choice(C, n)
    for r in ('fp32', 'int8'):
        p = np.where(rng.random(n) < .7, t, rng.choice(C, n))
        pd.DataFrame(dict(image_id=[f'i{i}' for i in range(n)], group=np.where(np.arange(n) % 3 == 0, 'dark', 'light'), true_label=t,
                          predicted_label=p, confidence=.9, top1_pred=p, top1_prob=.9, top5_preds=[str([str(x)]) for x in p],
                          top5_probs='[0.9]')).to_csv(d/f'{r}.csv', index=False)
    return read_run_csvs([str(d/'fp32.csv'), str(d/'int8.csv')], class_names=C)


@pytest.mark.parametrize('n_classes, matrix', [(114, False), (3, True)])
def test_confusion_figures_by_class_count(tmp_path, n_classes, matrix):
    names = {p.name for p in write_report(analyse(_runs(tmp_path, n_classes), baseline='fp32', n_boot=20), tmp_path/'out')}
    assert ('confusion_int8.png' in names) == matrix and ('confused_pairs_int8.png' in names) != matrix
    assert ('confused_pairs.csv' in names) != matrix and (n_classes > MAX_MATRIX_CLASSES) != matrix
    if not matrix:
        cp = pd.read_csv(tmp_path/'out'/'confused_pairs.csv')
        assert set(cp.run) == {'fp32', 'int8'} and (cp.groupby('run').size() == 20).all() and (cp.true_label != cp.predicted).all()

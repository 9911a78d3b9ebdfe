"""Full-scale checks of the real dataset loaders (fairquant.datasets) against the real label files in
shared/reference/metadata, with hard-linked placeholder images for every id (~160k links in all).

The notebook nbs/00_datasets.ipynb shows lighter versions of these checks; the full ones live here because they
load each dataset several times (FairFace alone has 97,698 ids). Skipped, with a printed reason, when
shared/reference is absent (a user's clone)."""
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fairquant.core import reference_dir
from fairquant.datasets import (get_dataset, placeholder_images, read_fitzpatrick17k, read_fairface_csv,
                                read_isic_ground_truth, read_celeba_attrs, FITZ_CSV, FITZ_SPLIT_FILES, ISIC_GT,
                                ISIC_META, ISIC_IMAGES, FAIRFACE_ORDERS, CELEBA_ATTR, CELEBA_PARTITION, CELEBA_IMAGES)

REF = reference_dir()
if REF is None:
    _why = "shared/reference not found (set FAIRQUANT_SHARED or place shared/ beside the checkout)"
    print(f"SKIPPED tests/test_real_datasets.py: {_why}")
    pytest.skip(_why, allow_module_level=True)
META = REF/'metadata'


def _link(src, dst):
    Path(dst).parent.mkdir(parents=True, exist_ok=True); os.symlink(src, dst)


# ---------------------------------------------------------------- Fitzpatrick17k
@pytest.fixture(scope='module')
def fitz(tmp_path_factory):
    root = tmp_path_factory.mktemp('fitz')/'fz22'
    _link(META/'fitzpatrick17k'/FITZ_CSV, root/FITZ_CSV)
    rec, _, _ = read_fitzpatrick17k(META/'fitzpatrick17k'/FITZ_CSV)
    assert placeholder_images(root, 'images/' + rec.image_id + '.jpg') == 16577
    return root


def test_fitzpatrick_six_groups(fitz):
    ds = get_dataset('fitzpatrick17k', fitz)
    assert len(ds) == 16012 and ds.groups == ['I', 'II', 'III', 'IV', 'V', 'VI']
    assert np.bincount(ds.table.group).tolist() == [2947, 4808, 3308, 2781, 1533, 635]
    assert ds.report == {'dropped: unknown skin type (-1) in fitzpatrick_scale': 565}
    assert len(ds.classes) == 114 and ds.classes == sorted(ds.classes)
    n = ds.table.split.value_counts()
    assert n.to_dict() == {"train": 11208, "val": 2402, "test": 2402}   # exact 70/15/15 of 16,012


def test_fitzpatrick_binary_and_label_levels(fitz):
    ds = get_dataset('fitzpatrick17k', fitz, grouping='binary', label_level='nine_partition_label', check='none')
    assert ds.groups == ['I-III', 'IV-VI'] and np.bincount(ds.table.group).tolist() == [11063, 4949]
    assert len(ds.classes) == 9
    ds3 = get_dataset('fitzpatrick17k', fitz, label_level='three_partition_label', check='none')
    assert ds3.classes == ['benign', 'malignant', 'non-neoplastic']
    assert np.bincount(ds3.table.label).sum() == 16012


def test_fitzpatrick_centaur_column(fitz):
    ds = get_dataset('fitzpatrick17k', fitz, skin_column='fitzpatrick_centaur', check='none')
    assert len(ds) == 15504 and ds.report == {'dropped: unknown skin type (-1) in fitzpatrick_centaur': 1073}


def test_fitzpatrick_2021_header_same_table(fitz, tmp_path):
    f21 = tmp_path/'fz21'
    _link(META/'fitzpatrick17k'/'original_2021'/FITZ_CSV, f21/FITZ_CSV); _link(fitz/'images', f21/'dataset_images')
    a, b = get_dataset('fitzpatrick17k', fitz), get_dataset('fitzpatrick17k', f21)
    assert b.table.drop(columns='path').equals(a.table.drop(columns='path'))
    assert b.report == {'dropped: unknown skin type (-1) in fitzpatrick': 565}
    with pytest.raises(ValueError, match="missing column"):
        get_dataset('fitzpatrick17k', f21, skin_column='fitzpatrick_centaur')


def test_fitzpatrick_split_files(fitz, tmp_path):
    root = tmp_path/'fzs'
    _link(META/'fitzpatrick17k'/FITZ_CSV, root/FITZ_CSV); _link(fitz/'images', root/'images')
    full = pd.read_csv(META/'fitzpatrick17k'/FITZ_CSV)
    part = full.iloc[48:]   # mimic the packaged CSV's 16,529 rows
    cut = np.random.default_rng(4242).permutation(len(part)); n8, n9 = int(.8*len(part)), int(.9*len(part))
    for f, ix in [('train_score.csv', cut[:n8]), ('all_val.csv', cut[n8:n9]), ('all_test.csv', cut[n9:])]:
        part.iloc[np.sort(ix)].assign(hasher=lambda d: d.md5hash).to_csv(root/f)   # index written: empty first cell
    assert open(root/'train_score.csv').readline().startswith(',md5hash,')
    known = part[part.fitzpatrick_scale != -1]
    ds = get_dataset('fitzpatrick17k', root, check='none')
    assert ds.table.split.value_counts().to_dict() == {
        s: int(known.md5hash.isin(pd.read_csv(root/f).md5hash).sum()) for s, f in FITZ_SPLIT_FILES.items()}
    assert ds.report['dropped: not in any split file'] == int((full.fitzpatrick_scale[:48] != -1).sum())
    # research layout: train_score + all_val only -> all_val is our test, val carved from train_score
    os.remove(root/'all_test.csv')
    ds2 = get_dataset('fitzpatrick17k', root, check='none', val_fraction=0.1)
    tv = known.md5hash.isin(pd.read_csv(root/'all_val.csv').md5hash)
    assert set(ds2.split('test').image_id) == set(known.md5hash[tv])
    assert abs((ds2.table.split == 'val').sum() / (ds2.table.split != 'test').sum() - 0.1) < 0.002
    rnd = get_dataset('fitzpatrick17k', root, check='none', splits='random')
    assert rnd.table.split.tolist() == get_dataset('fitzpatrick17k', fitz, check='none').table.split.tolist()


# ---------------------------------------------------------------- ISIC 2019
@pytest.fixture(scope='module')
def isic(tmp_path_factory):
    root = tmp_path_factory.mktemp('isic')/'isic'
    for f in (ISIC_GT, ISIC_META): _link(META/'isic2019'/f, root/f)
    gt, _ = read_isic_ground_truth(META/'isic2019'/ISIC_GT)
    assert placeholder_images(root, ISIC_IMAGES + '/' + gt.image + '.jpg') == 25331
    return root


def test_isic_default(isic):
    ds = get_dataset('isic2019', isic)
    assert len(ds) == 24947 and ds.groups == ['female', 'male']
    assert np.bincount(ds.table.group).tolist() == [11661, 13286]
    assert ds.classes == ['MEL', 'NV', 'BCC', 'AK', 'BKL', 'DF', 'VASC', 'SCC']
    assert ds.report == {'dropped: empty sex': 384, 'dropped classes without images: UNK': 1}
    xt = pd.crosstab(np.array(ds.classes)[ds.table.label], np.array(ds.groups)[ds.table.group])
    assert xt.loc[ds.classes].to_numpy().tolist() == [[1980, 2461], [6379, 6225], [1317, 2000], [406, 458],
                                                      [1134, 1467], [117, 122], [125, 128], [203, 425]]
    les = ds.table[ds.table.lesion_id != '']
    assert les.groupby('lesion_id').split.nunique().max() == 1
    frac = ds.table.split.value_counts(normalize=True)
    assert abs(frac['train'] - 0.7) < 0.01 and abs(frac['val'] - 0.15) < 0.01 and abs(frac['test'] - 0.15) < 0.01


def test_isic_gender_header_same_table(isic, tmp_path):
    root = tmp_path/'isic_gender'
    _link(META/'isic2019'/ISIC_GT, root/ISIC_GT); _link(isic/ISIC_IMAGES, root/ISIC_IMAGES)
    _link(META/'isic2019'/'variant_gender_header'/ISIC_META, root/ISIC_META)
    a, b = get_dataset('isic2019', isic, check='none'), get_dataset('isic2019', root, check='none')
    assert b.table.drop(columns='path').equals(a.table.drop(columns='path'))


def test_isic_unknown_group_and_empty_class(isic):
    ds = get_dataset('isic2019', isic, keep_unknown_sex=True, keep_empty_classes=True, check='none')
    assert len(ds) == 25331 and ds.groups == ['female', 'male', 'unknown']
    assert np.bincount(ds.table.group).tolist() == [11661, 13286, 384]
    assert len(ds.classes) == 9 and ds.report == {}


def test_isic_image_level_split_leaks_lesions(isic):
    ds = get_dataset('isic2019', isic, group_lesions=False, check='none')
    les = ds.table[ds.table.lesion_id != '']
    assert les.groupby('lesion_id').split.nunique().max() > 1   # why group_lesions=True is the default


# ---------------------------------------------------------------- FairFace
@pytest.fixture(scope='module')
def fairface(tmp_path_factory):
    root = tmp_path_factory.mktemp('ff')/'fairface'
    tr = META/'fairface'/'fairface_label_train.csv'
    va = META/'fairface'/'variant_header_file_name'/'fairface_label_val.csv'
    _link(tr, root/'fairface_label_train.csv'); _link(va, root/'fairface_label_val.csv')
    ids = pd.concat([read_fairface_csv(tr).image_id, read_fairface_csv(va).image_id])
    assert placeholder_images(root, ids) == 97698
    return root


def test_fairface_age_by_race(fairface):
    ds = get_dataset('fairface', fairface)
    assert (ds.classes, ds.groups) == (FAIRFACE_ORDERS['age'], FAIRFACE_ORDERS['race'])
    assert ds.table.split.value_counts().to_dict() == {'train': 78070, 'test': 10954, 'val': 8674}
    assert np.bincount(ds.split('test').group).tolist() == [1550, 1516, 1556, 2085, 1209, 1623, 1415]
    assert np.bincount(ds.table.group[ds.table.split != 'test']).tolist() == [12287, 12319, 12233, 16527, 9216, 13367, 10795]
    assert np.bincount(ds.split('test').label).tolist() == [199, 1356, 1181, 3300, 2330, 1353, 796, 321, 118]
    assert np.bincount(ds.table.label[ds.table.split != 'test']).tolist() == [1792, 10408, 9103, 25598, 19250, 10744,
                                                                             6228, 2779, 842]


def test_fairface_race_by_gender(fairface):
    ds = get_dataset('fairface', fairface, target='race', sensitive='gender', check='none')
    assert ds.classes == FAIRFACE_ORDERS['race'] and ds.groups == ['Male', 'Female']
    assert np.bincount(ds.table.group[ds.table.split != 'test']).tolist() == [45986, 40758]
    assert np.bincount(ds.split('test').group).tolist() == [5792, 5162]
    assert set(ds.split('test').image_id) == {f'val/{i}.jpg' for i in range(1, 10955)}


# ---------------------------------------------------------------- CelebA
@pytest.fixture(scope='module')
def celeba(tmp_path_factory):
    root = tmp_path_factory.mktemp('celeba')/'celeba'   # torchvision's layout: <root>/celeba/...
    _link(META/'celeba'/'partial_first_20000_rows'/CELEBA_ATTR, root/CELEBA_ATTR)
    _link(META/'celeba'/CELEBA_PARTITION, root/CELEBA_PARTITION)
    attrs, _, _ = read_celeba_attrs(root/CELEBA_ATTR)
    assert placeholder_images(root, CELEBA_IMAGES + '/' + attrs.image) == 20000
    return root


def test_celeba_partial_attributes(celeba):
    with pytest.warns(UserWarning, match='line 1 declares 202599 images but the file has 20000 rows'):
        ds = get_dataset('celeba', celeba.parent)
    assert (len(ds), ds.classes, ds.groups) == (20000, ['not Blond_Hair', 'Blond_Hair'], ['not Male', 'Male'])
    assert np.bincount(ds.table.group).tolist() == [11569, 8431] and int(ds.table.label.sum()) == 2977
    assert ds.report == {'list_attr_celeba.txt: images declared on line 1 (202599) minus rows present (20000)': 182599,
                         'list_eval_partition.txt entries without attributes': 182599}
    assert ds.table.split.value_counts().to_dict() == {'train': 20000}   # ids 000001-020000 are all official train


def test_celeba_other_attributes(celeba):
    with pytest.warns(UserWarning):
        ds = get_dataset('celeba', celeba, target='Smiling', sensitive='Young', check='none')
    assert ds.classes == ['not Smiling', 'Smiling'] and ds.groups == ['not Young', 'Young']
    assert (int(ds.table.label.sum()), int(ds.table.group.sum())) == (9587, 15598)

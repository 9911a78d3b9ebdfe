"""Bad-input suite: every malformed input a user can hand a stage gives a clear error naming the file / row / option and
what was expected, or (only where the user asked for skips) a counted, reported skip. Never a silent drop, never a
silent guess.

Each case below feeds exactly ONE fault into an otherwise valid input and asserts the error TYPE and every fragment of
its message that a user needs (the file/row/option AND the expectation). Count them with
`.venv/bin/python -m pytest -q tests/test_bad_inputs.py --co`.

| category                                    | inputs | clear error | counted skip | loud warning | read correctly | silent acceptance left |
|---------------------------------------------|-------:|------------:|-------------:|-------------:|---------------:|-----------------------:|
| datasets (CSV, images, archives, folders)   |     33 |          30 |         1(*) |            0 |        2(**)   |                      0 |
| checkpoints (weights, sidecar, names)       |      8 |           8 |            0 |            0 |            0   |                      0 |
| importance files, metrics, reducers (20)    |     22 |          22 |            0 |            0 |            0   |                      0 |
| quantization config, bits, budgets (30)     |     21 |          20 |            0 |            1 |            0   |                      0 |
| calibration folders and manifests (40)      |      7 |           7 |            0 |            0 |            0   |                      0 |
| ONNX files (40/50)                          |      4 |           4 |            0 |            0 |            0   |                      0 |
| per-image CSVs (60)                         |     23 |          23 |            0 |            0 |            0   |                      0 |
| CLI arguments (fairquant-run, -finetune)    |     13 |          13 |            0 |            0 |            0   |                      0 |
| stage order (run folder missing a stage)    |      6 |           6 |            0 |            0 |            0   |                      0 |
| validation split / table without a group    |      2 |           2 |            0 |            0 |            0   |                      0 |
| sidecars, pairs, resume, sizes (41/45/50)   |     31 |          31 |            0 |            0 |            0   |                      0 |
| **total**                                   |**170** |     **166** |    **1**(*) |        **1** |        **2**   |                  **0** |

(**) Two inputs that were accepted silently and wrongly before (issue 21): a 16-bit greyscale PNG is now scaled to 8 bits (it
saturated: 98 % of pixels became 255) and integer labels 0…10 are classes in numeric order (label 10 was index 2). The
grid's plan-time checks (duplicate YAML keys, unknown keys at every depth, parameter types, onnxruntime extra_options,
--workers 0, a folder that is not a grid's) are in tests/test_grid.py and nbs/70_experiments.ipynb.

(*) missing images with `on_bad='skip'` (the user asked): dropped AND counted in `ds.report`; the corrupt-image input is
also run that way (counted skip) after its default clear error. The loud warning is stage 30's documented contract
(issue 30): `levels` that do not sum to 1 are normalised WITH a `UserWarning` naming the option and the shares used.
The two 50_validation cases (a split without a group; a group table with a missing group accuracy) were silent
acceptances found by this suite and are now refused at the source. `test_group_metrics_missing_group_is_visible`
checks that a group without images stays visible (`missing_groups`) instead of vanishing from a worst-group value.

The 41/45/50 row (issue 21 items 9 and 11): a quantized checkpoint's sidecar without `weights`, or whose summaries
(`bits_summary`, `layers_quantized`) or run's `avg_bits` are not its bits; a mixed ONNX file whose metadata bit map is
not its containers; `localise_onnx` given its FP32 and INT8 files swapped, two FP32 or two INT8 models, or an FP32 and
an INT8 model of two checkpoints; a 40 file edited before 45 reads it, a 45 model edited before 50 validates it;
a resumed validation whose chunks were made by another model, on other images, with another batching or without
their key (refused, naming the chunk and what differs; they were discarded before); sizes and thresholds of 41, 45
and 50 that mean nothing (negative or zero counts, thresholds outside their range). A resume chunk cut short by a
kill is in tests/test_faults.py: computed again with a warning naming it, never read as fewer rows, the CSV
byte-identical.
"""
import ast, io, json, os, shutil, sys, tarfile, warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fairquant.core import (read_csv, load_json, read_safetensors, require_stage, check_pipeline, run_pipeline_cli,
                            predictions_table, save_json)
from fairquant.datasets import (get_dataset, check_archive, safe_extract, open_stage_dataset, make_splits, load_synthetic,
                                read_image)
from fairquant.finetune import load_checkpoint, train_cli, example_run, checkpoint_paths
from fairquant.metrics import group_metrics
from fairquant import importance as imp
from fairquant import mixed_precision as mp
from fairquant.bias import read_run_csvs, read_preds, analyse

# --------------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "The worked example run folder (00_datasets + 10_finetune_vit_swin), copied from the example_run cache"
    return example_run(tmp_path_factory.mktemp('bad')/'run')

@pytest.fixture(scope='module')
def ck_files(run):
    d = run/'10_finetune_vit_swin'/'resnet18'
    return d/'resnet18_synthetic.safetensors', d/'resnet18_synthetic.json'

@pytest.fixture(scope='module')
def ck(ck_files): return load_checkpoint(ck_files[0])

@pytest.fixture(scope='module')
def ds(run): return open_stage_dataset(run)

def _png(path, size=8):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(path)

def _csv_dataset(tmp, rows=None, **cols):
    "A tiny valid CSV dataset (4 images, 2 classes, 2 groups, every split) with the given columns replaced"
    root = tmp/'data'
    t = pd.DataFrame(dict(path=[f'im/{i}.png' for i in range(6)], label=['a', 'b', 'a', 'b', 'a', 'b'],
                          group=['g', 'h', 'g', 'h', 'h', 'g'], split=['train', 'train', 'val', 'val', 'test', 'test']))
    for p in t.path: _png(root/p)
    for k, v in cols.items():
        if v is None: t = t.drop(columns=k)
        else: t[k] = v
    root.mkdir(parents=True, exist_ok=True); t.to_csv(root/'metadata.csv', index=False)
    return root

def _check(fn, exc, *fragments):
    "Run `fn`; it must raise `exc` and its message must hold every fragment"
    with pytest.raises(exc) as e: fn()
    msg = str(e.value)
    for f in fragments: assert f in msg, f"missing {f!r} in: {msg}"
    return msg

# ------------------------------------------------------------------------------------------------------- datasets
DATASET_CASES = {
    'missing group column': (dict(group=None), ValueError, ["metadata.csv", "missing column(s) ['group']"]),
    'unknown group': (dict(group=['g', 'h', 'g', 'x', 'h', 'g'], _kw=dict(groups=['g', 'h'])), ValueError,
                      ["metadata.csv", "row 5", "group 'x' is not one of the 2 expected values", "['g', 'h']"]),
    'unknown class': (dict(label=['a', 'b', 'a', 'c', 'a', 'b'], _kw=dict(classes=['a', 'b'])), ValueError,
                      ["metadata.csv", "row 5", "class 'c' is not one of the 2 expected values"]),
    'label index out of range': (dict(label=[0, 1, 0, 7, 0, 1], _kw=dict(classes=['0', '1'])), ValueError,
                                 ["metadata.csv", "row 5", "class 7 is not one of the 2 expected values for class: ['0', '1']"]),
    'duplicate image_id': (dict(image_id=['i0', 'i1', 'i2', 'i2', 'i4', 'i5'], _kw=dict(id_col='image_id')), ValueError,
                           ["metadata.csv", "image_id 'i2' appears more than once"]),
    'empty label cell': (dict(label=['a', 'b', None, 'b', 'a', 'b']), ValueError, ["metadata.csv", "row 4", "empty label (column 'label')"]),
    'empty group cell': (dict(group=['g', 'h', 'g', None, 'h', 'g']), ValueError, ["metadata.csv", "row 5", "empty group (column 'group')"]),
    'unknown split name': (dict(split=['train', 'train', 'val', 'val', 'test', 'tset']), ValueError,
                           ["metadata.csv", "split value(s) ['tset'] not in ('train', 'val', 'test')"]),
    'missing image file': (dict(path=['im/0.png', 'im/1.png', 'im/2.png', 'im/nope.png', 'im/4.png', 'im/5.png']), FileNotFoundError,
                           ["metadata.csv", "row 5", "missing image", "nope.png", "on_bad='skip'"]),
    'a listed group with no image': (dict(_kw=dict(groups=['g', 'h', 'k'])), ValueError,
                                     ["metadata.csv", "group(s) ['k'] have no images", "expected every group"]),
    'bad on_bad option': (dict(_kw=dict(on_bad='ignore')), ValueError, ["on_bad='ignore'", "expected 'raise' or 'skip'"]),
    'bad check option': (dict(_kw=dict(check='full')), ValueError, ["check='full'", "expected 'none', 'exists' or 'decode'"]),
    'duplicate class names': (dict(_kw=dict(classes=['a', 'b', 'a'])), ValueError,
                              ["metadata.csv", "class name(s) ['a'] appear more than once in ['a', 'b', 'a']"]),
    'duplicate group names': (dict(_kw=dict(groups=['g', 'h', 'h'])), ValueError, ["metadata.csv", "group name(s) ['h'] appear more than once"]),
    'labels mixing integers and names': (dict(label=['1', '2', '1', 'other', '1', '2']), ValueError,
                                         ["metadata.csv", "class values mix integers ['1', '2'] and names ['other']", "pass classes=[...]"]),
}

@pytest.mark.parametrize('case', list(DATASET_CASES))
def test_dataset_csv(tmp_path, case):
    cols, exc, frags = DATASET_CASES[case]
    cols = dict(cols); kw = cols.pop('_kw', {})
    root = _csv_dataset(tmp_path, **cols)
    _check(lambda: get_dataset('csv', root, **kw), exc, *frags)

def test_dataset_unreadable_image_error_then_counted_skip(tmp_path):
    "A corrupt image: an error naming row and file; with on_bad='skip' (the user asked) it is dropped AND counted"
    root = _csv_dataset(tmp_path)
    (root/'im'/'3.png').write_bytes(b'\x89PNG\r\n\x1a\n garbage')
    _check(lambda: get_dataset('csv', root, check='decode'), FileNotFoundError, "metadata.csv", "row 5", "unreadable image", "3.png")
    ds = get_dataset('csv', root, check='decode', on_bad='skip')
    assert ds.report == {'skipped: unreadable image': 1} and len(ds) == 5

def test_dataset_missing_image_counted_skip(tmp_path):
    root = _csv_dataset(tmp_path, path=['im/0.png', 'im/1.png', 'im/2.png', 'im/x.png', 'im/4.png', 'im/y.png'])
    ds = get_dataset('csv', root, on_bad='skip')
    assert ds.report == {'skipped: missing image': 2} and len(ds) == 4 and 'im/x.png' not in set(ds.table.path)

def test_dataset_integer_labels_in_numeric_order(tmp_path):
    "Integer labels 0…10 are classes in numeric order: label 10 is index 10, not 2 (as text '10' sorts before '2')"
    root = _csv_dataset(tmp_path, label=[0, 2, 10, 1, 10, 2])
    ds = get_dataset('csv', root)
    assert ds.classes == ['0', '1', '2', '10'] and ds.table.label.tolist() == [0, 2, 3, 1, 3, 2]

@pytest.mark.parametrize('mode', ['I;16', 'F', 'I', 'RGBA-hole'])
def test_dataset_image_modes(tmp_path, mode):
    "16-bit grey is scaled to 8 bits (not 98 % saturated); float, 32-bit integer and transparent images are refused by name"
    a = (np.arange(32*32).reshape(32, 32)*64).astype(np.uint16)
    p = tmp_path/('x.png' if mode in ('I;16', 'RGBA-hole') else 'x.tif')
    if mode == 'I;16': Image.fromarray(a).save(p)
    elif mode == 'RGBA-hole': Image.fromarray(np.dstack([np.zeros((4, 4, 3), np.uint8), np.full((4, 4), 255, np.uint8)]) * np.uint8(1)).save(p)
    else: Image.fromarray(a.astype(np.float32 if mode == 'F' else np.int32)).save(p)
    if mode == 'RGBA-hole':
        im = np.asarray(Image.open(p)).copy(); im[0, 0, 3] = 10; Image.fromarray(im).save(p)
        _check(lambda: read_image(p), ValueError, str(p), "6.2% of its pixels are (partly) transparent")
    elif mode == 'I;16':
        r = np.asarray(read_image(p))
        assert r.dtype == np.uint8 and (r[..., 0] == np.rint(a/257)).all() and (r == 255).mean() < 0.01
    else: _check(lambda: read_image(p), ValueError, str(p), f"image mode {mode!r}", "convert it to 8-bit RGB")

def test_dataset_image_truncated(tmp_path):
    p = tmp_path/'t.png'; _png(p, 32); p.write_bytes(p.read_bytes()[:40])
    _check(lambda: read_image(p), ValueError, str(p), "not a readable image")

def test_dataset_zero_byte_csv(tmp_path):
    root = _csv_dataset(tmp_path); (root/'metadata.csv').write_text('')
    _check(lambda: get_dataset('csv', root), ValueError, "metadata.csv", "file is empty")

def test_dataset_header_only_csv(tmp_path):
    root = _csv_dataset(tmp_path); (root/'metadata.csv').write_text('path,label,group,split\n')
    _check(lambda: get_dataset('csv', root), ValueError, "metadata.csv", "no images left to load")

def test_dataset_bad_split_fractions(tmp_path):
    _check(lambda: make_splits(pd.DataFrame(dict(group=[0, 1], label=[0, 1])), (0.7, 0.2, 0.2)), ValueError,
           "fractions=(0.7, 0.2, 0.2)", "summing to 1")

def test_dataset_synthetic_root_made_with_other_options(tmp_path):
    "Issue item 5's sibling: a folder holding a dataset generated with other options is refused, not reused"
    load_synthetic(tmp_path/'s', n=30, seed=1)
    _check(lambda: load_synthetic(tmp_path/'s', n=50, seed=1), ValueError, str(tmp_path/'s'), "'n': 30", "not the requested", "'n': 50")

def test_dataset_root_parent_is_a_file(tmp_path):
    "Issue item 6: a parent folder that is a file: the error names the path the user gave"
    (tmp_path/'f').write_text('x')
    _check(lambda: load_synthetic(tmp_path/'f'/'s', n=20), (FileExistsError, NotADirectoryError, ValueError, OSError), str(tmp_path/'f'))

def _tar(path, members):
    with tarfile.open(path, 'w') as t:
        for name, kind, target in members:
            ti = tarfile.TarInfo(name)
            if kind == 'file': data = b'x'; ti.size = 1; t.addfile(ti, io.BytesIO(data))
            else: ti.type, ti.linkname = tarfile.SYMTYPE, target; t.addfile(ti)
    return path

def test_archive_dotdot_member(tmp_path):
    a = _tar(tmp_path/'a.tar', [('../evil.txt', 'file', None)])
    _check(lambda: check_archive(a), ValueError, str(a), "member '../evil.txt'", "'..' in path", "nothing was written")

def test_archive_link_escaping_through_second_link(tmp_path):
    "Issue item 6: a link that escapes only through another link in the archive (the standard library's data filter catches it)"
    a = _tar(tmp_path/'a.tar', [('d/l1', 'sym', '.'), ('d/l2', 'sym', 'l1/../..'), ('d/ok', 'file', None)])
    _check(lambda: check_archive(a), ValueError, str(a), "member 'd/l2'", "runs through another link")

def test_archive_truncated(tmp_path):
    "Issue item 6: a truncated tar names the file"
    a = _tar(tmp_path/'a.tar', [(f'f{i}.txt', 'file', None) for i in range(40)])
    a.write_bytes(a.read_bytes()[:1500])
    _check(lambda: safe_extract(a, tmp_path/'out'), ValueError, str(a), "ends after 1 member(s) without its end-of-archive marker; truncated")
    assert not any((tmp_path/'out').iterdir()) if (tmp_path/'out').exists() else True

def test_archive_name_clash_moves_nothing(tmp_path):
    "Issue item 6: on a name clash nothing of the archive is moved in (no half-extracted destination)"
    a = _tar(tmp_path/'a.tar', [('a.txt', 'file', None), ('b.txt', 'file', None)])
    out = tmp_path/'out'; out.mkdir(); (out/'b.txt').write_text('mine')
    _check(lambda: safe_extract(a, out), FileExistsError, str(out), "already holds ['b.txt']", "nothing was moved in")
    assert sorted(p.name for p in out.iterdir()) == ['b.txt'] and (out/'b.txt').read_text() == 'mine'

def test_stage_dataset_edited_by_hand(tmp_path, run):
    r = tmp_path/'r'; shutil.copytree(run/'00_datasets', r/'00_datasets')
    t = pd.read_csv(r/'00_datasets'/'images.csv'); t.loc[3, 'label'] = (t.loc[3, 'label'] + 1) % 5
    t.to_csv(r/'00_datasets'/'images.csv', index=False)
    _check(lambda: open_stage_dataset(r), ValueError, "images.csv", "does not match the hash recorded", "dataset.json")

# ------------------------------------------------------------------------------------------------------ checkpoints
def _copy_ck(ck_files, tmp):
    w, j = (tmp/p.name for p in ck_files)
    shutil.copy(ck_files[0], w); shutil.copy(ck_files[1], j)
    return w, j

def test_checkpoint_truncated(tmp_path, ck_files):
    w, _ = _copy_ck(ck_files, tmp_path); w.write_bytes(w.read_bytes()[:3000])
    _check(lambda: load_checkpoint(w), ValueError, str(w), "not a readable safetensors file", "truncated")

def test_checkpoint_zero_bytes(tmp_path, ck_files):
    w, _ = _copy_ck(ck_files, tmp_path); w.write_bytes(b'')
    _check(lambda: load_checkpoint(w), ValueError, str(w), "not a readable safetensors file")

def test_checkpoint_missing(tmp_path):
    _check(lambda: load_checkpoint(tmp_path/'nope.safetensors'), FileNotFoundError, "nope.safetensors", "not found")

def test_checkpoint_sidecar_missing_key(tmp_path, ck_files):
    w, j = _copy_ck(ck_files, tmp_path); m = json.loads(j.read_text()); del m['classes']; j.write_text(json.dumps(m))
    _check(lambda: load_checkpoint(w), ValueError, str(j), "classes = None differs from what", "does not match the weights")

def test_checkpoint_sidecar_not_json(tmp_path, ck_files):
    w, j = _copy_ck(ck_files, tmp_path); j.write_text('{"classes": [')
    _check(lambda: load_checkpoint(w), ValueError, str(j), "not valid JSON")

def test_checkpoint_sidecar_sha_mismatch(tmp_path, ck_files):
    w, j = _copy_ck(ck_files, tmp_path); m = json.loads(j.read_text()); m['weights']['sha256'] = '0'*64; j.write_text(json.dumps(m))
    _check(lambda: load_checkpoint(w), ValueError, str(w), "SHA-256 differs", j.name)

def test_checkpoint_plain_weights(tmp_path):
    from safetensors.torch import save_file
    p = tmp_path/'plain.safetensors'; save_file({'w': torch.zeros(2)}, str(p))
    _check(lambda: load_checkpoint(p), ValueError, str(p), "not a FairQuant checkpoint", "load_pretrained")

def test_checkpoint_classes_differ_from_data(ck, ds):
    other = type(ds)(ds.name, ds.root, list(reversed(ds.classes)), ds.groups, ds.table)
    _check(lambda: imp.check_names(ck, other), ValueError, str(ck.path), "checkpoint classes", "differ from the dataset's classes",
           "not trained on this dataset")

# ------------------------------------------------------------------------------------------------ importance (20)
def _maps(G=2):
    return {'conv.weight': torch.rand(G, 3, 2, 1, 1), 'fc.weight': torch.rand(G, 4, 3)}

def test_importance_file_truncated(tmp_path):
    p = imp.save_importance(_maps(), tmp_path/'i.safetensors', **{k: 0 for k in imp.IMPORTANCE_META}
                            | dict(groups=['a', 'b'], classes=['x']))
    p.write_bytes(p.read_bytes()[:200])
    _check(lambda: imp.load_importance(p), ValueError, str(p), "truncated or not an importance file")

def test_importance_file_not_ours(tmp_path):
    from safetensors.torch import save_file
    p = tmp_path/'i.safetensors'; save_file({'w': torch.zeros(2, 3)}, str(p))
    _check(lambda: imp.load_importance(p), ValueError, str(p), "not a FairQuant importance file")

def test_importance_layers_differ_from_model(tmp_path, ck):
    p = imp.save_importance(_maps(), tmp_path/'i.safetensors', **{k: 0 for k in imp.IMPORTANCE_META}
                            | dict(groups=['light', 'dark'], classes=list(ck.classes), checkpoint_sha256=None, metric=mp.get_config('fq_qat').metric))
    _check(lambda: mp.load_scores(p, mp.get_config('fq_qat'), ck.model, ['light', 'dark']), ValueError, str(p),
           "its layers differ from the model's", "missing ['conv1.weight'", "unexpected ['conv.weight']")

def test_importance_groups_differ_from_data(tmp_path, ck):
    layers = {k: mp.weight_shape(m) for k, m in mp.quant_layers(ck.model).items()}
    maps = {k: torch.rand(2, *s) for k, s in layers.items()}
    p = imp.save_importance(maps, tmp_path/'i.safetensors', **{k: 0 for k in imp.IMPORTANCE_META}
                            | dict(groups=['dark', 'light'], classes=list(ck.classes), checkpoint_sha256=None, metric=mp.get_config('fq_qat').metric))
    _check(lambda: mp.load_scores(p, mp.get_config('fq_qat'), ck.model, ['light', 'dark']), ValueError, str(p),
           "groups ['dark', 'light'] differ from the dataset's ['light', 'dark']")

@pytest.mark.parametrize('case', ['other metric', 'no checkpoint hash', 'other checkpoint', 'other dataset'])
def test_importance_provenance(tmp_path, ck, case):
    "Maps are refused unless they carry the checkpoint's hash and the configuration's metric"
    layers = {k: mp.weight_shape(m) for k, m in mp.quant_layers(ck.model).items()}
    meta = {k: 0 for k in imp.IMPORTANCE_META} | dict(groups=['light', 'dark'], classes=list(ck.classes), metric='grape', checkpoint_sha256='a'*64)
    meta |= {'other metric': dict(metric='hawq'), 'no checkpoint hash': dict(checkpoint_sha256=None), 'other checkpoint': {}, 'other dataset': dict(dataset_sha1='d'*40)}[case]
    p = imp.save_importance({k: torch.rand(2, *s) for k, s in layers.items()}, tmp_path/'i.safetensors', **meta)
    frag = {'other metric': "holds 'hawq' importance; configuration 'fq_qat' ranks units by 'grape'",
            'no checkpoint hash': "records no checkpoint SHA-256", 'other checkpoint': "computed for weights with SHA-256 aaaaaaaaaaaa",
            'other dataset': "drawn from another dataset (table SHA-1 dddddddddddd, this run's cccccccccccc)"}[case]
    sha = 'a'*64 if case in ('other metric', 'other dataset') else 'b'*64
    _check(lambda: mp.load_scores(p, mp.get_config('fq_qat'), ck.model, ['light', 'dark'], checkpoint_sha256=sha,
                                  dataset_sha1='c'*40 if case == 'other dataset' else None), ValueError, str(p), frag)

def test_importance_unknown_reducer():
    _check(lambda: imp.reduce_importance(_maps(), 'median'), KeyError, "unknown reducer 'median'", "known: balanced, cvar, max, mean, subtractive")

def test_importance_subtractive_three_groups():
    _check(lambda: imp.reduce_importance(_maps(3), 'subtractive', unprivileged=0, groups=['a', 'b', 'c']), ValueError,
           "subtractive needs exactly 2 groups, found 3 (0: a, 1: b, 2: c)")

def test_importance_subtractive_without_unprivileged():
    _check(lambda: imp.reduce_importance(_maps(2), 'subtractive', groups=['a', 'b']), ValueError, "unprivileged", "(0 or 1)", "got None")

def test_importance_cvar_alpha_zero():
    _check(lambda: imp.reduce_importance(_maps(), 'cvar', alpha=0), ValueError, "cvar: alpha=0", "(0, 1]")

def test_importance_unknown_metric(ck, ds):
    _check(lambda: imp.group_importance(ck.model, [], 'fisher'), KeyError, "unknown importance metric 'fisher'", "known:")

def test_importance_calibration_on_test_split(ds):
    _check(lambda: imp.calibration_batches(ds, 'test'), ValueError, "split='test' is refused", "'train' or 'val'")

def test_importance_group_without_calibration_images(tmp_path, ck, ds):
    "A group absent from the calibration sample would get an all-zero map: 'no weight matters to it'. Refused."
    t = ds.table.copy(); t = t[~((t.split == 'train') & (t.group == 1))].reset_index(drop=True)
    thin = type(ds)(ds.name, ds.root, ds.classes, ds.groups, t, ds.options)
    _check(lambda: imp.importance_for_checkpoint(ck, thin, tmp_path/'imp', ['gradient'], 'train', 1, 8), ValueError,
           "group(s) ['dark']", "no calibration image", "split 'train'")
    assert not (tmp_path/'imp').exists()

@pytest.mark.parametrize('opt', ['tags', 'metrics'])
def test_importance_run_with_an_empty_list(run, opt):
    "run_importance(tags=[]) or metrics=[] would do nothing: refused, naming the option"
    frag = {'tags': ("tags=[]", "pass tags=None for every checkpoint"), 'metrics': ("metrics=[]", "name at least one of ['gradient', 'grape', 'hawq']")}[opt]
    _check(lambda: imp.run_importance(run, **{'metrics': ['gradient'], opt: []}), ValueError, *frag)

@pytest.mark.parametrize('kw,exc,frag', [
    (dict(device='gpu'), ValueError, ("device='gpu'", "expected auto, cpu, cuda or cuda:N")),
    (dict(workers=-1), ValueError, ("workers=-1", "expected a whole number ≥ 0", "DataLoader worker processes")),
    (dict(device='cuda'), RuntimeError, ("device='cuda'", "CUDA is not usable here", "use device='cpu' or 'auto'")),
], ids=['device-gpu', 'workers-negative', 'cuda-unusable'])
def test_importance_run_bad_device_or_workers(tmp_path, run, kw, exc, frag):
    "Issue 19 item 3: stage 20's device and workers are checked before any work; CUDA asked for where none is usable is an error, not a CPU run"
    if kw.get('device') == 'cuda' and torch.cuda.is_available(): pytest.skip('CUDA is usable here')
    r = tmp_path/'r'; shutil.copytree(run/'00_datasets', r/'00_datasets'); shutil.copytree(run/'10_finetune_vit_swin', r/'10_finetune_vit_swin')
    _check(lambda: imp.run_importance(r, ['gradient'], progress=False, **kw), exc, *frag)
    assert not (r/'20_importance').exists()

@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
def test_importance_file_not_finite(tmp_path, bad):
    "A map holding NaN or inf (written by other means) is refused when read, naming the file, the tensor and the group"
    meta = {k: 0 for k in imp.IMPORTANCE_META} | dict(groups=['a', 'b'], classes=['x'])
    maps = _maps(); maps['fc.weight'][1, 2, 0] = bad
    head = {k: json.dumps(v) for k, v in (meta | dict(format=imp.IMPORTANCE_FORMAT, layers=list(maps))).items()}
    from safetensors.torch import save_file
    p = tmp_path/'i.safetensors'; save_file(maps, str(p), metadata=head)
    _check(lambda: imp.load_importance(p), ValueError, str(p), "tensor 'fc.weight' holds 1 NaN or infinite value(s) (group(s) ['b'])")

# ------------------------------------------------------------------------------------------- quantization config (30)
_BMAPS = {'a.weight': torch.rand(4, 3), 'b.weight': torch.rand(6, 3)}

@pytest.mark.parametrize('bits,levels,frag', [
    ((2, 4, 8), (0.5, 0.5), "levels=[0.5, 0.5] has 2 shares but bits=[2, 4, 8] has 3"),
    ((-1, 4, 8), (0.2, 0.4, 0.4), "[-1] outside 0..16"),
    ((2, 4, 32), (0.2, 0.4, 0.4), "[32] outside 0..16"),
    ((2, 4, 4), (0.2, 0.4, 0.4), "repeated bit width"),
    ((2, 4.5, 8), (0.2, 0.4, 0.4), "whole numbers"),
    ((2, 4, 8), (0.5, -0.1, 0.6), "shares must be finite and >= 0"),
    ((2, 4, 8), (0, 0, 0), "the shares sum to 0"),
], ids=['levels-length', 'negative-bit', 'bit-32', 'repeated-bit', 'fractional-bit', 'negative-share', 'zero-shares'])
def test_quant_levels_and_bits(bits, levels, frag):
    _check(lambda: mp.assign_bits(_BMAPS, 'per_channel', bits, levels), ValueError, frag)

def test_quant_levels_not_summing_warns_loudly():
    "Documented contract (issue 30): normalised, with a warning naming the option and the shares used. Not silent."
    with pytest.warns(UserWarning, match=r"levels=\[0.5, 0.6\] sum to 1.1, not 1: normalised to \[0.454545, 0.545455\]"):
        mp.assign_bits(_BMAPS, 'per_channel', (4, 8), (0.5, 0.6))

def test_quant_unknown_granularity():
    _check(lambda: mp.assign_bits(_BMAPS, 'per_row'), ValueError, "granularity='per_row'", "expected one of ('per_tensor', 'per_channel', 'per_param')")

def test_quant_unknown_config():
    _check(lambda: mp.get_config('fq_qta'), KeyError, "unknown quantization configuration 'fq_qta'", "known:", "fq_qat")

def test_quant_unknown_config_field():
    _check(lambda: mp.get_config('fq_qat', lamda=1), ValueError, "config 'fq_qat'", "unknown field(s) ['lamda']")

def test_quant_budget_outside_range():
    _check(lambda: mp.budget_levels((2, 4, 8), 9.0), ValueError, "avg_bits=9.0", "outside the bit widths' range 2..8")

@pytest.mark.parametrize('target', [40, 9.0, 1.0, float('nan')])
def test_quant_budget_target_out_of_range(target):
    "Was silent for per_channel/per_tensor: 40 gave every unit 8 bits, NaN gave every unit 2 bits"
    _check(lambda: mp.budget_assign(_BMAPS, 'per_channel', (2, 4, 8), target=target), ValueError, f"target={target}",
           "within the bit widths' range 2..8")

def test_quant_bits_for_unknown_weight(ck):
    m = load_checkpoint(ck.path).model
    _check(lambda: mp.quantize_model(m, {'head.weightt': torch.tensor([4])}, 'per_tensor'), KeyError,
           "['head.weightt'] are not Conv2d/Linear weights")

def test_quant_bits_wrong_shape(ck):
    m = load_checkpoint(ck.path).model; name, layer = next(iter(mp.quant_layers(m).items()))
    _check(lambda: mp.quantize_model(m, {name: torch.full((3,), 4)}, 'per_channel'), ValueError, "bits of shape (3,)",
           f"expected ({mp.weight_shape(layer)[0]},)")

def test_quant_non_finite_scores():
    bad = dict(_BMAPS, **{'b.weight': torch.full((6, 3), float('nan'))})
    _check(lambda: mp.budget_assign(bad, 'per_channel'), ValueError, "scores['b.weight']", "non-finite", "must be finite")

def test_quant_settings_negative_epochs():
    _check(lambda: mp.StageSettings(epochs=-1), ValueError, "StageSettings.epochs=-1", "too small")

def test_quant_report_split_without_a_group(run, ds):
    "A group with no test image would silently leave the worst-group accuracy and the gap; refused before any work"
    t = ds.table.copy(); t = t[~((t.split == 'test') & (t.group == 1))].reset_index(drop=True)
    thin = type(ds)(ds.name, ds.root, ds.classes, ds.groups, t, ds.options)
    row = mp.stage_checkpoints(run)[0]
    _check(lambda: mp.run_config(run, row, 'fp32_ft', mp.StageSettings(epochs=0), thin, progress=False), ValueError,
           "test split has no images of group(s) ['dark']", "worst-group")

def test_group_metrics_missing_group_is_visible():
    "group_metrics keeps an absent group as NaN with n = 0 (it is not silently renamed into a worst-group value)"
    m = group_metrics([0, 1, 0], [0, 1, 1], [0, 0, 0], ['x', 'y'], ['a', 'b'])   # true, predicted, group
    assert m['group_n'] == {'a': 3, 'b': 0} and np.isnan(m['group_acc']['b']) and m['missing_groups'] == ['b']

# ------------------------------------------------------------------------------------------------------ ONNX (40/50)
@pytest.fixture(scope='module')
def onnx_file(ck, tmp_path_factory):
    from fairquant.onnx_int8 import export_onnx
    p = tmp_path_factory.mktemp('onnx')/'m.onnx'
    return export_onnx(ck.model, p, ck.classes, ck.groups, ck.data_config)

def test_onnx_truncated(tmp_path, onnx_file):
    from fairquant.onnx_int8 import read_onnx_meta
    p = tmp_path/'t.onnx'; p.write_bytes(onnx_file.read_bytes()[:5000])
    _check(lambda: read_onnx_meta(p), ValueError, str(p), "not a valid ONNX model", "truncated")

def test_onnx_without_metadata(tmp_path, onnx_file):
    import onnx
    from fairquant.onnx_int8 import read_onnx_meta
    m = onnx.load(str(onnx_file)); del m.metadata_props[:]; p = tmp_path/'plain.onnx'; onnx.save(m, str(p))
    _check(lambda: read_onnx_meta(p), ValueError, str(p), "no FairQuant metadata", "pass classes=, groups= and data_config=")

def test_onnx_classes_disagree_with_data(tmp_path, onnx_file, ds):
    import onnx
    from fairquant.validation import load_predictor, check_names
    m = onnx.load(str(onnx_file))
    for p in m.metadata_props:
        if p.key == 'classes': p.value = json.dumps(list(reversed(json.loads(p.value))))
    f = tmp_path/'swapped.onnx'; onnx.save(m, str(f))
    _check(lambda: check_names(load_predictor(f), ds), ValueError, str(f), "class names", "differ from the dataset's",
           "same names, another order")

def test_onnx_classes_given_disagree_with_metadata(onnx_file, ds):
    from fairquant.onnx_int8 import read_onnx_meta
    _check(lambda: read_onnx_meta(onnx_file, classes=['x'] * 5), ValueError, str(onnx_file), "classes ['x', 'x', 'x', 'x', 'x'] differ from the model's metadata")

# --------------------------------------------------------------------------------------- calibration folders (40)
def _calibration_case(tmp_path, ds, case):
    from fairquant.onnx_int8 import extract_calibration, read_calibration
    if case == 'calib_root holds the dataset': return lambda: extract_calibration(ds, Path(ds.root).parent, 4, 'random', 'train')
    if case == 'calib_root inside the dataset': return lambda: extract_calibration(ds, Path(ds.root)/'cal', 4, 'random', 'train')
    if case == 'calib folder not ours':
        (tmp_path/'cal'/ds.name).mkdir(parents=True); (tmp_path/'cal'/ds.name/'x.txt').write_text('user file')
        return lambda: extract_calibration(ds, tmp_path/'cal', 4, 'random', 'train')
    d = extract_calibration(ds, tmp_path/'ok', 4, 'random', 'train'); m = pd.read_csv(d/'manifest.csv', dtype=str)
    if case == 'manifest duplicate image_id': m = pd.concat([m, m.iloc[:1]])
    if case == 'manifest path outside folder': m.loc[0, 'file'] = '../../etc/passwd'
    if case == 'manifest test split': m.loc[0, 'split'] = 'test'
    if case == 'manifest test image': m.loc[0, 'image_id'] = ds.split('test').image_id.iloc[0]
    m.to_csv(d/'manifest.csv', index=False)
    return lambda: read_calibration(d, ds.classes, ds.groups, ds)

CALIB_CASES = {
    'calib_root holds the dataset': ["calib_root", "would replace or hold the dataset"],
    'calib_root inside the dataset': ["calib_root", "would lie inside the dataset"],
    'calib folder not ours': ["exists and is not a calibration folder made by FairQuant", "left untouched"],
    'manifest duplicate image_id': ["manifest.csv", "is listed more than once"],
    'manifest path outside folder': ["manifest.csv", "file '../../etc/passwd' is not a file name inside"],
    'manifest test split': ["manifest.csv", "come from the test split"],
    'manifest test image': ["manifest.csv", "come from the test split results are reported on"],
}

@pytest.mark.parametrize('case', list(CALIB_CASES))
def test_calibration(tmp_path, ds, case):
    "Stage 40 never replaces a folder it did not make, and a calibration manifest is checked when read"
    before = sorted(p.name for p in Path(ds.root).iterdir())
    _check(_calibration_case(tmp_path, ds, case), ValueError, *CALIB_CASES[case])
    assert sorted(p.name for p in Path(ds.root).iterdir()) == before   # the dataset untouched

# -------------------------------------------------------------------------------------------- per-image CSVs (60)
def _pred_csv(tmp, name='p.csv', n=6, **cols):
    "A valid per-image CSV in our schema (`predictions_table`), then columns replaced / dropped"
    probs = np.tile([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]], (n // 2, 1))
    t = predictions_table([f'i{k}' for k in range(n)], ['g', 'h'] * (n // 2), [0, 1] * (n // 2), probs, ['a', 'b', 'c'])
    for k, v in cols.items():
        if v is None: t = t.drop(columns=k)
        else: t[k] = v
    t.to_csv(tmp/name, index=False)
    return tmp/name

_P5 = lambda first: [first] + ["[0.8, 0.1, 0.1]", "[0.7, 0.2, 0.1]"] * 2 + ["[0.8, 0.1, 0.1]"]   # row 0 replaced
_T5 = lambda first: [first] + ["['b', 'a', 'c']", "['a', 'b', 'c']"] * 2 + ["['b', 'a', 'c']"]

PRED_CASES = {
    'missing top5_preds': (dict(top5_preds=None), ["missing column(s) ['top5_preds']"]),
    'missing true_label': (dict(true_label=None), ["missing column(s) ['true_label']"]),
    'no confidence column': (dict(top1_prob=None, confidence=None, top5_probs=None), ["missing a confidence column"]),
    'NaN top1_prob': (dict(top1_prob=[0.7, np.nan, 0.7, 0.8, 0.7, 0.8]), ["column 'top1_prob'", "row 1 (line 3)", "expected a probability in [0, 1]"]),
    'prob above 1': (dict(top1_prob=[0.7, 1.5, 0.7, 0.8, 0.7, 0.8]), ["column 'top1_prob'", "row 1 (line 3)", "expected a probability in [0, 1], got 1.5"]),
    'top5_probs sum above 1': (dict(top5_probs=_P5("[0.7, 0.6, 0.1]")), ["column 'top5_probs'", "row 0 (line 2)", "sum to 1.4", "at most 1"]),
    'top5_probs not descending': (dict(top5_probs=_P5("[0.7, 0.1, 0.2]")), ["column 'top5_probs'", "row 0 (line 2)", "not in descending order"]),
    'top5_probs length differs from top5_preds': (dict(top5_probs=["[0.7, 0.2]"] * 6), ["column 'top5_probs'", "row 0 (line 2)", "2 probabilities for 3 classes in top5_preds"]),
    'top1_prob differs from top5_probs[0]': (dict(top1_prob=[0.7, 0.8, 0.7, 0.8, 0.7, 0.3]), ["top1_prob differs from the first entry of top5_probs at row 5 (line 7): 0.3 vs 0.8"]),
    'unknown class name': (dict(true_label=['a', 'b', 'a', 'zz', 'a', 'b']), ["column 'true_label'", "row 3 (line 5)", "unknown label 'zz'", "class_names are ['a', 'b', 'c']"]),
    'duplicate class in top5': (dict(top5_preds=_T5("['a', 'a', 'c']")),
                                ["column 'top5_preds'", "row 0 (line 2)", "lists class 'a' twice"]),
    'unparsable top5 list': (dict(top5_preds=_T5("['a', 'b'")),
                             ["column 'top5_preds'", "row 0 (line 2)", "expected a non-empty list"]),
    'top1_pred disagrees with top5': (dict(top1_pred=['a', 'b', 'a', 'b', 'a', 'a']), ["top1_pred differs from the first entry of top5_preds", "row 5 (line 7)"]),
    'integer label out of range': (dict(true_label=[0, 1, 0, 9, 0, 1]), ["column 'true_label'", "row 3 (line 5)", "integer label 9 is outside 0..2"]),
    'missing group value': (dict(group=['g', None, 'g', 'h', 'g', 'h']), ["column 'group'", "row 1 (line 3)", "missing group"]),
    'missing image_id value': (dict(image_id=['i0', None, 'i2', 'i3', 'i4', 'i5']), ["column 'image_id'", "row 1 (line 3)", "missing image_id"]),
    'duplicate image_id': (dict(image_id=['i0', 'i1', 'i2', 'i2', 'i4', 'i5']), ["image_id 'i2' appears more than once"]),
}

@pytest.mark.parametrize('case', list(PRED_CASES))
def test_pred_csv(tmp_path, case):
    cols, frags = PRED_CASES[case]
    p = _pred_csv(tmp_path, **cols)
    _check(lambda: read_run_csvs([p], ['m'], ['a', 'b', 'c']), ValueError, str(p), *frags)

def test_pred_csv_header_only(tmp_path):
    p = _pred_csv(tmp_path); p.write_text(p.read_text().splitlines()[0] + '\n')
    _check(lambda: read_run_csvs([p], ['m'], ['a', 'b', 'c']), ValueError, str(p), "has a header but no rows")

def test_pred_csv_ids_differ_across_paired_runs(tmp_path):
    a = _pred_csv(tmp_path, 'a.csv'); b = _pred_csv(tmp_path, 'b.csv', image_id=['i0', 'i1', 'i2', 'i3', 'i4', 'j5'])
    _check(lambda: read_run_csvs([a, b], None, ['a', 'b', 'c']), ValueError, str(a), str(b), "different images", "['i5']", "['j5']")

def test_pred_csv_ids_in_some_files_only(tmp_path):
    "Issue item 2: ids in one file, not in the other: never paired by position silently"
    a = _pred_csv(tmp_path, 'a.csv'); b = _pred_csv(tmp_path, 'b.csv', image_id=None)
    _check(lambda: read_run_csvs([a, b], None, ['a', 'b', 'c']), ValueError, "image_id is in", str(a), "but not in", str(b))
    _check(lambda: read_run_csvs([a, b], None, ['a', 'b', 'c'], pair_by='position'), ValueError, "image_id is in", "cannot pair these runs by image")

def test_pred_csv_digit_class_names(tmp_path):
    "Issue item 1: integers that could be indices or names are refused unless the user says which"
    pd.DataFrame(dict(image_id=['i0', 'i1'], true_label=[1, 2], top1_prob=.9, top5_preds=["['1','3']", "['2','3']"])).to_csv(tmp_path/'p.csv', index=False)
    _check(lambda: read_run_csvs([tmp_path/'p.csv'], ['m'], ['1', '2', '3']), ValueError, str(tmp_path/'p.csv'), "column 'true_label'",
           "holds integers", "pass int_labels='index' or int_labels='name'")
    assert analyse(read_run_csvs([tmp_path/'p.csv'], ['m'], ['1', '2', '3'], int_labels='name'), n_boot=0).summary.top1.iloc[0] == 100.0

def test_pred_csv_run_names_count(tmp_path):
    p = _pred_csv(tmp_path)
    _check(lambda: read_run_csvs([p], ['m', 'n'], ['a', 'b', 'c']), ValueError, "run_names has 2 name(s) for 1 file(s)")

def test_pred_csv_glob_matches_nothing(tmp_path):
    _check(lambda: read_run_csvs(str(tmp_path/'*.csv')), FileNotFoundError, "csv_paths", "matches no file")

# --------------------------------------------------------------------------------------------------- CLI arguments
def _run_cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, 'argv', ['fairquant-run', *args])
    with pytest.raises(SystemExit) as e: run_pipeline_cli()
    return e.value.code, capsys.readouterr().err

@pytest.mark.parametrize('args,frag', [
    (['--stages', ','], "expected comma-separated stage names"),
    (['--stages', '00_datasets', '--set', '10_finetune_vit_swin.epochs'], "expected STAGE.NAME=VALUE"),
    (['--stages', '00_datasets,15_typo'], "unknown stage(s) ['15_typo']"),
    (['--stages', '10_finetune_vit_swin,00_datasets'], "in pipeline order"),
    (['--stages', '00_datasets', '--set', '00_datasets.optoins={}'], "unknown parameter(s) ['optoins']"),
    (['--stages', '00_datasets', '--preset', 'huge'], "invalid choice: 'huge'"),
    (['--stages', '00_datasets,10_finetune_vit_swin', '--set', '10_finetune_vit_swin.epochs=3x'],
     "10_finetune_vit_swin: parameter epochs='3x' is a str; expected int (its default is 2)"),
], ids=['empty-stages', 'set-without-eq', 'unknown-stage-after-valid', 'out-of-order', 'unknown-param', 'unknown-preset', 'wrong-type-value'])
def test_cli_fairquant_run(tmp_path, monkeypatch, capsys, args, frag):
    "Issue item 4: every argument is validated before anything runs (exit 2, no run folder made)"
    code, err = _run_cli(monkeypatch, capsys, *args, '--run_dir', str(tmp_path/'r'))
    assert code == 2 and frag in err, err
    assert not (tmp_path/'r').exists()

def test_cli_finetune_typo_run_dir(tmp_path):
    "Issue item 3: a run folder without 00_datasets is refused (no synthetic data is generated, nothing trains)"
    _check(lambda: train_cli(['--run_dir', str(tmp_path/'runs'/'typo'), '--model', 'vit_mini']), FileNotFoundError,
           str(tmp_path/'runs'/'typo'), "run folder not found")
    assert not (tmp_path/'runs'/'typo').exists()

def test_cli_finetune_run_dir_without_datasets(tmp_path):
    "An existing run folder without 00_datasets: refused, naming the missing file and the stage that makes it"
    _check(lambda: train_cli(['--run_dir', str(tmp_path), '--model', 'vit_mini']), FileNotFoundError,
           "no output of stage 00_datasets", "dataset.json", "run 00_datasets on this run folder first")
    assert not (tmp_path/'00_datasets').exists()

def test_cli_finetune_bad_number(tmp_path, capsys):
    with pytest.raises(SystemExit) as e: train_cli(['--run_dir', str(tmp_path), '--model', 'vit_mini', '--epochs', 'two'])
    assert e.value.code == 2 and "--epochs: invalid int value: 'two'" in capsys.readouterr().err

@pytest.mark.parametrize('opt,val,frag', [
    ('--save_every_s', '-1', "TrainConfig.save_every_s=-1.0: expected a finite number >= 0"),
    ('--save_every_s', 'nan', "TrainConfig.save_every_s=nan: expected a finite number >= 0"),
    ('--save_every', '-2', "TrainConfig.save_every=-2: expected an integer >= 0"),
], ids=['negative-seconds', 'nan-seconds', 'negative-steps'])
def test_cli_finetune_bad_save_schedule(tmp_path, opt, val, frag):
    "Issue 19 item 3: a resume-save schedule that is negative or NaN is refused naming the option, before the run folder is read"
    _check(lambda: train_cli(['--run_dir', str(tmp_path/'r'), '--model', 'vit_mini', opt, val]), ValueError, frag)
    assert not (tmp_path/'r').exists()

# ------------------------------------------------------------------------------------------------------ stage order
def test_order_importance_without_finetune(tmp_path, run):
    r = tmp_path/'r'; shutil.copytree(run/'00_datasets', r/'00_datasets')
    _check(lambda: imp.run_importance(r, ['gradient']), FileNotFoundError, "no output of stage 10_finetune_vit_swin", "checkpoints.json",
           "needed by 20_importance")

def test_order_importance_without_datasets(tmp_path, run):
    r = tmp_path/'r'; shutil.copytree(run/'10_finetune_vit_swin', r/'10_finetune_vit_swin')
    _check(lambda: imp.run_importance(r, ['gradient']), FileNotFoundError, "no output of stage 00_datasets", "needed by 20_importance")

def test_order_mixed_without_finetune(tmp_path):
    (tmp_path/'r').mkdir()
    _check(lambda: mp.stage_checkpoints(tmp_path/'r'), FileNotFoundError, "no output of stage 10_finetune_vit_swin", "needed by 30_mixed_precision")

def test_order_mixed_without_importance(tmp_path, run):
    r = tmp_path/'r'; shutil.copytree(run, r)
    row = mp.stage_checkpoints(r)[0]
    _check(lambda: mp.run_config(r, row, 'fq_qat', mp.StageSettings(epochs=0), progress=False), FileNotFoundError,
           "no output of stage 20_importance", "importance-grape.safetensors", "needed by 30_mixed_precision (fq_qat)")

def test_order_validation_without_datasets(tmp_path):
    from fairquant.validation import find_models
    (tmp_path/'r').mkdir()
    _check(lambda: find_models(tmp_path/'r'), FileNotFoundError, "no output of stage 00_datasets", "needed by 50_validation")

def test_order_typo_run_folder(tmp_path):
    _check(lambda: open_stage_dataset(tmp_path/'typo'), FileNotFoundError, str(tmp_path/'typo'), "run folder not found")

# ------------------------------------------------------------------- 50_validation: a split or table without a group

def test_validation_split_without_a_group(ds, ck):
    from fairquant.validation import validate
    t = ds.table[~((ds.table.split == 'test') & (ds.table.group == 1))].reset_index(drop=True)
    thin = type(ds)(ds.name, ds.root, ds.classes, ds.groups, t, ds.options)
    _check(lambda: validate(ck.path, thin, 'test', None, progress=False), ValueError, "no images of group(s) ['dark']")

def test_validation_group_table_with_missing_group():
    from fairquant.validation import group_table
    e = dict(run='r', precision='fp32', baseline=None, n=10, n_split=10, acc=.8, group_acc={'light': .9, 'dark': float('nan')}, worst_group_acc=.9)
    _check(lambda: group_table([e], ['light', 'dark']), ValueError, "r", "no accuracy for group(s) ['dark']")

# --------------------------------------- mixed-precision sidecars and files (41), fair INT8 (45), validation resume and sizes (50)
@pytest.fixture(scope='module')
def q30(ck, tmp_path_factory):
    "A stage-30 quantized checkpoint (resnet18, 4 bits per channel, channel 0 of every layer at 2 bits), saved as stage 30 saves it"
    q = load_checkpoint(ck.path).model
    bits = mp.uniform_bits(q, 4, 'per_channel')
    for b in bits.values(): b[0] = 2
    mp.quantize_model(q, bits, 'per_channel')
    w, _ = mp.save_quantized_checkpoint(q, tmp_path_factory.mktemp('q30')/'resnet18_mixed', ck.classes, ck.groups, ck.data_config, 'per_channel', 'mixed')
    return w, q

def _edit_json(src, dest, edit):
    "A copy of the checkpoint `src` (weights + sidecar) in `dest` whose sidecar `edit` changed; the copy's weights"
    w, j = dest/src.name, dest/src.with_suffix('.json').name
    shutil.copy(src, w); s = json.loads(src.with_suffix('.json').read_text()); edit(s); j.write_text(json.dumps(s))
    return w

SIDECAR_CASES = {
    'sidecar without weights': (lambda s: s.pop('weights'), ["resnet18_mixed.json: no 'weights' entry with the SHA-256 of resnet18_mixed.safetensors"]),
    'sidecar bits_summary not its bits': (lambda s: s['bits_summary']['fc.weight'].update(hist={'4': 5}),
                                          ["resnet18_mixed.json: bits_summary['fc.weight'] = {'shape': [5], 'hist': {'4': 5}} but resnet18_mixed.safetensors holds "
                                           "{'shape': [5], 'hist': {'2': 1, '4': 4}} (fq_bits/fc.weight)", "rerun 30_mixed_precision"]),
    'sidecar layers_quantized not its bits': (lambda s: s.update(layers_quantized=2), ["resnet18_mixed.json: layers_quantized = 2 but resnet18_mixed.safetensors holds bits for 21 layers"]),
}

@pytest.mark.parametrize('case', list(SIDECAR_CASES))
def test_quantized_sidecar(tmp_path, q30, case):
    "A quantized checkpoint's sidecar is checked against the bits beside it when 41 (and 50) read it"
    from fairquant.mixed_onnx import load_mixed_checkpoint
    edit, frags = SIDECAR_CASES[case]
    _check(lambda: load_mixed_checkpoint(_edit_json(q30[0], tmp_path, edit)), ValueError, *frags)

def test_quantized_run_avg_bits_not_its_checkpoint(q30):
    "The avg_bits a run reports (summary.json, read by 50's find_models) must be its checkpoint's"
    from fairquant.validation import load_predictor
    _check(lambda: load_predictor(q30[0], avg_bits=4.0), ValueError, "summary.json: avg_bits 4.0 but the run's checkpoint resnet18_mixed.safetensors holds")

def test_mixed_onnx_bit_assignment_not_its_bits(tmp_path, q30, ck):
    "A mixed ONNX file whose metadata bit map is edited (a channel moved from 2 to 4 bits) is refused by 50's loader, naming the layer"
    import onnx
    from fairquant.mixed_onnx import export_mixed
    from fairquant.onnx_int8 import set_onnx_meta
    from fairquant.validation import load_predictor
    f = tmp_path/'m.onnx'; export_mixed(q30[1], f, ck.classes, ck.groups, ck.data_config, 'per_channel')
    load_predictor(f)                                                            # as written: accepted
    m = onnx.load(str(f)); ba = json.loads({p.key: p.value for p in m.metadata_props}['bit_assignment'])
    ba['layers']['fc'] = {'4': 5}; set_onnx_meta(m, dict(bit_assignment=json.dumps(ba))); onnx.save(m, str(f))
    _check(lambda: load_predictor(f), ValueError, str(f), "metadata bit_assignment['layers']['fc'] = {'4': 5}", "needs {4: 5} channels per container, but the file stores {2: 1, 4: 4}")

@pytest.fixture(scope='module')
def int8_run(tmp_path_factory):
    "A run folder with 00, 10 and stage 40's FP32 and static INT8 exports of resnet18"
    from fairquant.fair_int8 import example_int8_run
    return example_int8_run(tmp_path_factory.mktemp('int8')/'run', tags=('resnet18',))

def _int8_files(run):
    d = run/'40_onnx_int8'/'resnet18'
    return d/'resnet18-fp32.onnx', d/'resnet18-int8-static.onnx'

def _localise_case(tmp_path, run, case):
    import onnx
    from fairquant.fair_int8 import localise_onnx
    from fairquant.onnx_int8 import set_onnx_meta
    fp, q8 = _int8_files(run)
    x, c = np.zeros((2, 3, 32, 32), np.float32), np.array([0, 1])
    if case == 'other checkpoint':
        m = onnx.load(str(q8)); set_onnx_meta(m, dict(source_sha256='f'*64)); q8 = tmp_path/'other.onnx'; onnx.save(m, str(q8))
    args = {'swapped': (q8, fp), 'both FP32': (fp, fp), 'both INT8': (q8, q8), 'other checkpoint': (fp, q8)}[case]
    return lambda: localise_onnx(*args, x, c, ['light', 'dark'], progress=False)

LOCALISE_CASES = {
    'swapped': ["fp32 and int8 are swapped: fp32 is the quantized model (", "resnet18-int8-static.onnx: precision 'int8-static'",
                "and int8 the FP32 one (", "pass the FP32 model as fp32 and the INT8 model quantized from it as int8"],
    'both FP32': ["int8 must be an INT8 model, but neither is quantized", "resnet18-fp32.onnx: precision 'fp32', 0 quantization op(s)"],
    'both INT8': ["fp32 must be the FP32 model, but both are quantized", "pass the FP32 export int8 was quantized from"],
    'other checkpoint': ["resnet18-fp32.onnx) was exported from checkpoint", "other.onnx) from checkpoint ffffffffffff…", "rerun 40_onnx_int8"],
}

@pytest.mark.parametrize('case', list(LOCALISE_CASES))
def test_localise_pair(tmp_path, int8_run, case):
    "45's localisation takes (fp32, int8): each model says what it is (precision, quantization ops, checkpoint); a wrong pair is refused, naming which is which"
    _check(_localise_case(tmp_path, int8_run, case), ValueError, *LOCALISE_CASES[case])

def test_fair_int8_reads_an_edited_40_file(tmp_path, int8_run):
    "Stage 45 checks 40's files against the SHA-256 40 recorded before it reads them"
    import onnx
    from fairquant.fair_int8 import stage_inputs
    r = tmp_path/'r'; shutil.copytree(int8_run, r)
    f = _int8_files(r)[1]; m = onnx.load(str(f)); m.doc_string = 'edited'; onnx.save(m, str(f))
    _check(lambda: stage_inputs(r), ValueError, f"{f}: its SHA-256 is not the", "40_onnx_int8/models.json recorded when the file was written")

def test_validation_of_an_edited_45_model(tmp_path, int8_run):
    "A 45_fair_int8 model edited after 45 wrote it (its row records the file's SHA-256, as 45 writes it) is refused by 50, naming the file"
    import onnx
    from fairquant.core import file_sha256, stage_dir
    from fairquant.validation import find_models
    r = tmp_path/'r'; shutil.copytree(int8_run, r)
    d45 = stage_dir(r, '45_fair_int8'); f = d45/'resnet18'/'resnet18-int8-fair.onnx'; f.parent.mkdir()
    shutil.copyfile(_int8_files(r)[1], f)
    save_json(dict(models=[dict(run='resnet18-int8-fair', tag='resnet18', precision='int8-fair', file='resnet18/resnet18-int8-fair.onnx',
                                baseline='resnet18-onnx-fp32', source_checkpoint='', sha256=file_sha256(f), size_bytes=f.stat().st_size, options={})]),
              d45/'models.json')
    assert 'resnet18-int8-fair' in set(find_models(r).run)
    m = onnx.load(str(f)); p = next(p for p in m.metadata_props if p.key == 'data_config')
    p.value = json.dumps(dict(json.loads(p.value), crop_pct=0.5)); onnx.save(m, str(f))            # data_config edited by hand
    _check(lambda: find_models(r), ValueError, f"{f}: its SHA-256 is not the", "45_fair_int8/models.json recorded", "data_config, bit assignment or weights edited")

@pytest.mark.parametrize('kw,frag', [
    (dict(n_val=-5), "n_val=-5: expected a whole number ≥ 0 (0: every val image)"),
    (dict(n_test=-1), "n_test=-1: expected a whole number ≥ 0 (0: every test image)"),
    (dict(batch_size=0), "batch_size=0: expected a whole number ≥ 1"),
    (dict(threads=-2), "threads=-2: expected a whole number ≥ 0 (0 or None: onnxruntime's default)"),
    (dict(n_boot=0), "n_boot=0: expected a whole number ≥ 1"),
    (dict(min_calib_images=-1), "min_calib_images=-1: expected a whole number ≥ 0"),
    (dict(clip_ratio=0.0), "clip_ratio=0.0: expected a finite number > 0"),
    (dict(min_clip=1.5), "min_clip=1.5: expected a share of activations in [0, 1]"),
], ids=['n_val', 'n_test', 'batch_size', 'threads', 'n_boot', 'min_calib_images', 'clip_ratio', 'min_clip'])
def test_fair_int8_sizes(tmp_path, kw, frag):
    "Stage 45's sizes and thresholds are checked before it reads anything"
    from fairquant.fair_int8 import run_fair_int8
    _check(lambda: run_fair_int8(tmp_path, progress=False, **kw), ValueError, frag)

class _Stop(Exception): pass

def _stop_after(k):
    def cb(done, total):
        if done == k: raise _Stop(f'stopped after chunk {done}')
    return cb

_VKW = dict(split='test', n=56, batch_size=8, chunk_batches=2, progress=False)

def _resume_case(tmp_path, ck, ds, onnx_file, case):
    "A validation stopped after one chunk, then resumed with one thing changed"
    from fairquant.validation import validate
    out = tmp_path/'v.csv'
    with pytest.raises(_Stop): validate(ck.path, ds, out=out, callback=_stop_after(1), **_VKW)
    if case == 'chunks of another model': return lambda: validate(onnx_file, ds, out=out, **_VKW)
    if case == 'chunks of other images': return lambda: validate(ck.path, ds, out=out, **dict(_VKW, seed=1))
    if case == 'chunks of another batching': return lambda: validate(ck.path, ds, out=out, **dict(_VKW, batch_size=4))
    (tmp_path/'v.partial'/'key.json').unlink()
    return lambda: validate(ck.path, ds, out=out, **_VKW)

RESUME_CASES = {
    'chunks of another model': ["v.partial/chunk_00000.npy: partial results of another validation", "the model kind 'checkpoint' then, 'onnx' now",
                                "the model file's SHA-256 ", "they are not mixed into this one", "v.partial to start over"],
    'chunks of other images': ["v.partial/chunk_00000.npy: partial results of another validation (", "the image ids (SHA-1) ", "the images' bytes"],
    'chunks of another batching': ["v.partial/chunk_00000.npy: partial results of another validation (batch_size 8 then, 4 now)"],
    'chunks without key.json': ["v.partial/chunk_00000.npy", "v.partial/key.json is missing or unreadable, so what they were made from is unknown"],
}

@pytest.mark.parametrize('case', list(RESUME_CASES))
def test_validation_resume_refuses_other_chunks(tmp_path, ck, ds, onnx_file, case):
    "Issue 21 item 3: a resumed validation refuses chunks made from another model, other images or another batching (never mixed in, never dropped silently)"
    _check(_resume_case(tmp_path, ck, ds, onnx_file, case), ValueError, *RESUME_CASES[case])
    assert (tmp_path/'v.partial'/'chunk_00000.npy').exists() and not (tmp_path/'v.csv').exists()   # nothing deleted, nothing written

@pytest.mark.parametrize('kw,frag', [
    (dict(batch_size=0), "batch_size=0: expected a whole number ≥ 1"),
    (dict(chunk_batches=-1), "chunk_batches=-1: expected a whole number ≥ 1"),
    (dict(workers=-2), "workers=-2: expected a whole number ≥ 0"),
    (dict(n=-5), "n=-5: expected a whole number ≥ 0 (0: the whole split)"),
    (dict(seed=-1), "seed=-1: expected a whole number ≥ 0"),
], ids=['batch_size', 'chunk_batches', 'workers', 'n', 'seed'])
def test_validation_sizes(ck, ds, kw, frag):
    from fairquant.validation import validate
    _check(lambda: validate(ck.path, ds, **dict(dict(split='test', progress=False), **kw)), ValueError, frag)

def test_validation_runs_negative_threads(run):
    from fairquant.validation import validate_runs
    _check(lambda: validate_runs(run, threads=-1, progress=False), ValueError, "threads=-1: expected a whole number ≥ 0 (0 or None: onnxruntime's default)")

def test_validation_runs_negative_workers(run):
    "Stage 50's DataLoader workers (a real-scale grid sets 4) are checked before any model is found or run"
    from fairquant.validation import validate_runs
    _check(lambda: validate_runs(run, workers=-1, progress=False), ValueError, "workers=-1: expected a whole number ≥ 0 (0: images loaded in this process)")
    assert not (run/'50_validation').exists()

def test_mixed_export_negative_n_check(tmp_path):
    from fairquant.mixed_onnx import convert_mixed_run
    _check(lambda: convert_mixed_run(tmp_path, dict(tag='t', config='c', folder='t/c'), tmp_path, n_check=-8), ValueError, "n_check=-8: expected a whole number ≥ 0")

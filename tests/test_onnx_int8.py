"The file contract of stage 40_onnx_int8 that 50_validation relies on: models.json rows and ONNX metadata"
import ast, json, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fairquant.finetune import build_model, model_spec, save_checkpoint, data_config
import fairquant
from fairquant.onnx_int8 import (CalibReader, convert_checkpoint, write_models_index, read_onnx_meta, onnx_session,
                                 run_onnx, onnx_avg_bits, weight_count, ONNX_FORMAT, META_KEYS)

CLASSES, GROUPS = ['a', 'b', 'c'], ['g0', 'g1']
ROW_KEYS = {'run', 'tag', 'precision', 'file', 'baseline', 'source_checkpoint', 'size_bytes', 'avg_bits', 'options', 'source_sha256', 'sha256'}


@pytest.fixture(scope='module')
def stage(tmp_path_factory):
    d, cwd = tmp_path_factory.mktemp('run'), tmp_path_factory.mktemp('cwd')
    import os; old = os.getcwd(); os.chdir(cwd)   # Swin's shape inference fails once: onnxruntime would drop files here
    torch.manual_seed(0)
    m = build_model(model_spec('swin_mini', 32), CLASSES, None, {'crop_pct': 1.0})
    w, _ = save_checkpoint(m, d/'10_finetune_vit_swin'/'swin_mini'/'swin_mini_x', CLASSES, GROUPS)
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    calib = CalibReader([np.random.default_rng(i).standard_normal((4, 3, 32, 32)).astype(np.float32) for i in range(2)])
    out = d/'40_onnx_int8'
    rows = convert_checkpoint(w, out, x, calib, True, 'swin_mini', '10_finetune_vit_swin/swin_mini/swin_mini_x.safetensors')
    write_models_index(out, rows)
    os.chdir(old)
    assert sorted(p.name for p in cwd.iterdir()) == [], 'quantizing left files in the working directory'
    return out, m, x


def test_models_json_rows(stage):
    out, _, _ = stage
    idx = json.loads((out/'models.json').read_text())['models']
    # every control its own name: the checkpoint is swin_mini-fp32 (stage 10, validated by 50), its export swin_mini-onnx-fp32
    assert [r['run'] for r in idx] == ['swin_mini-onnx-fp32', 'swin_mini-int8-static', 'swin_mini-int8-dynamic']
    for r in idx:
        assert set(r) == ROW_KEYS
        assert r['file'] == f"swin_mini/swin_mini-{r['precision']}.onnx" and (out/r['file']).stat().st_size == r['size_bytes']
        # the export is compared with the checkpoint; INT8 with the export (its matched control: same weights, same runtime)
        assert r['baseline'] == ('swin_mini-fp32' if r['precision'] == 'fp32' else 'swin_mini-onnx-fp32')
    assert [r['precision'] for r in idx] == ['fp32', 'int8-static', 'int8-dynamic']
    # average weight bits: 32 for the export; INT8 quantizes every Linear and the patch convolution of Swin
    assert [r['avg_bits'] for r in idx] == [32.0, 8.0, 8.0]
    # provenance and integrity: the checkpoint each row was made from, and each file's own SHA-256 as written
    from fairquant.core import file_sha256
    assert len({r['source_sha256'] for r in idx}) == 1 and all(file_sha256(out/r['file']) == r['sha256'] for r in idx)


def test_avg_bits_counts_float_weights_at_32(stage, tmp_path):
    "A weight left in float (the head, excluded from quantization) counts at 32 bits over the checkpoint's Conv2d/Linear weights"
    out, m, _ = stage
    import onnx
    f = out/'swin_mini'/'swin_mini-int8-dynamic.onnx'
    g = onnx.load(str(f))
    ints = [i for i in g.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2]
    biggest = max(ints, key=lambda i: int(np.prod(i.dims)))
    w = onnx.numpy_helper.to_array(biggest).astype(np.float32)
    biggest.CopyFrom(onnx.numpy_helper.from_array(w, biggest.name))     # as if that weight had stayed in float
    onnx.save(g, str(tmp_path/'one_float.onnx'))
    n, k = weight_count(m), int(np.prod(biggest.dims))
    assert onnx_avg_bits(tmp_path/'one_float.onnx', n) == pytest.approx((8*(n - k) + 32*k)/n, abs=1e-12)
    with pytest.raises(ValueError, match='integer weights but its checkpoint has only 10 Conv2d/Linear weights'): onnx_avg_bits(f, 10)


def test_dynamic_transformer_convs_weight_only(stage):
    "The dynamic Swin keeps its patch convolution's weights in int8 but runs it as a float Conv, not as ConvInteger (~8x slower on x86)"
    import onnx
    from collections import Counter
    from fairquant.onnx_int8 import optimized_graph, float_weight_ops
    out, _, x = stage
    f, fp = out/'swin_mini'/'swin_mini-int8-dynamic.onnx', out/'swin_mini'/'swin_mini-fp32.onnx'
    n_conv = sum(n.op_type == 'Conv' for n in onnx.load(str(fp)).graph.node)
    q = read_onnx_meta(f)['quantization']
    assert n_conv >= 1 and (q['conv_weight_only'], q['weight_only_convs']) == (True, n_conv)
    g = onnx.load(str(f))
    inits = {i.name: i for i in g.graph.initializer}
    prod = {o: n for n in g.graph.node for o in n.output}
    convs = [n for n in g.graph.node if n.op_type == 'Conv']
    assert len(convs) == n_conv and not any(n.op_type == 'ConvInteger' for n in g.graph.node)
    for c in convs:   # weight = DequantizeLinear(int8 initializer, per-output-channel scale)
        dq = prod[c.input[1]]
        assert dq.op_type == 'DequantizeLinear' and inits[dq.input[0]].data_type == onnx.TensorProto.INT8
        assert list(inits[dq.input[1]].dims) == [inits[dq.input[0]].dims[0]]
    opt = optimized_graph(f)
    assert Counter(n.op_type for n in opt.graph.node).get('ConvInteger', 0) == 0 and float_weight_ops(opt) == []
    y, ref = run_onnx(onnx_session(f, 1), x.numpy()), run_onnx(onnx_session(fp, 1), x.numpy())
    assert np.abs(y - ref).max() <= 0.1*np.abs(ref).max()


def _project_imports(mod:str)->tuple:
    "(fairquant modules imported at the top of `fairquant/<mod>.py`, fairquant modules imported inside its functions), from its source"
    tree = ast.parse((Path(fairquant.__file__).parent/f'{mod}.py').read_text())
    def names(n):
        if isinstance(n, ast.ImportFrom) and (n.level or (n.module or '').startswith('fairquant')):
            base = (n.module or '').removeprefix('fairquant').lstrip('.')
            return [base.split('.')[0]] if base else [a.name for a in n.names]     # `from . import metrics`
        if isinstance(n, ast.Import): return [a.name.split('.')[1] for a in n.names if a.name.startswith('fairquant.')]
        return []
    top = {m for n in tree.body for m in names(n)}
    inner = {m for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(f) for m in names(n)}
    return top, inner


@pytest.mark.parametrize('mod', sorted(p.stem for p in Path(fairquant.__file__).parent.glob('*.py') if not p.stem.startswith('_')))
def test_no_project_import_inside_functions(mod):
    "Every module a module needs is imported at its top, where a reader sees it"
    assert _project_imports(mod)[1] == set()


def test_onnx_int8_does_not_depend_on_stage_30():
    "INT8 export and the loader of stage-40 files need nothing of stage 30; the mixed-precision export (mixed_onnx) does, openly"
    top, inner = _project_imports('onnx_int8')
    assert top == {'core', 'datasets', 'finetune', 'metrics'} and not inner
    assert {'mixed_precision', 'onnx_int8'} <= _project_imports('mixed_onnx')[0]
    code = "import sys, fairquant.onnx_int8; print(sorted(m for m in sys.modules if m.startswith('fairquant.')))"
    loaded = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300, check=True).stdout
    assert 'fairquant.mixed_precision' not in loaded and 'fairquant.mixed_onnx' not in loaded, loaded


def test_metadata_and_io_names(stage):
    out, m, x = stage
    for prec in ['fp32', 'int8-static', 'int8-dynamic']:
        f = out/'swin_mini'/f'swin_mini-{prec}.onnx'
        meta = read_onnx_meta(f, classes=CLASSES, groups=GROUPS)
        assert meta['fairquant_format'] == ONNX_FORMAT and meta['precision'] == prec
        assert (meta['input_name'], meta['output_name']) == ('input', 'logits')
        assert meta['data_config'] == data_config(m) and (meta['quantization'] == {}) == (prec == 'fp32')
        import onnx
        props = {p.key: p.value for p in onnx.load(str(f)).metadata_props}
        assert set(META_KEYS) <= set(props) and all(isinstance(v, str) for v in props.values())
        y = run_onnx(onnx_session(f, threads=1), x.numpy())
        assert y.shape == (6, 3)     # any batch size, three classes


def test_rewrite_replaces_rows(stage):
    out, _, _ = stage
    rows = json.loads((out/'models.json').read_text())['models']
    write_models_index(out, [dict(rows[0], size_bytes=1)])
    idx = json.loads((out/'models.json').read_text())['models']
    assert len(idx) == 3 and sum(r['size_bytes'] == 1 for r in idx) == 1
    write_models_index(out, rows)

"Group importance on more architectures than the notebook shows: the one-backward fast path equals one backward per group, HAWQ's one pass equals the per-group way."
import copy
import pytest, torch, torch.nn.functional as F, timm, torchvision
from fastcore import test as fc
from fairquant.importance import group_importance, target_layers, reduce_importance
import fairquant.importance as imp_mod

ARCHS = {
    'resnet50': lambda: torchvision.models.resnet50(num_classes=5),
    'deit_mini': lambda: timm.create_model('deit_tiny_patch16_224', depth=2, patch_size=4, img_size=32, num_classes=5),
    'tinyvit_mini': lambda: timm.create_model('tiny_vit_5m_224', embed_dims=(16, 32, 32, 64), depths=(1, 1, 1, 1),
                                              num_heads=(1, 1, 2, 2), window_sizes=(2, 2, 2, 2), num_classes=5),
    'convnext_atto': lambda: timm.create_model('convnext_atto', num_classes=5),   # depthwise convolutions
}

def slow_importance(model, batches, metric, G):
    "Per-definition oracle: one backward per group and batch on a copy, metric on .grad"
    m = copy.deepcopy(model).eval(); layers = target_layers(m); out = {}
    for mod in m.modules():   # TinyViT caches attention biases in eval mode: refill them without a graph
        if hasattr(mod, 'attention_bias_cache'): mod.attention_bias_cache = {}
    with torch.no_grad(): m(batches[0][0][:1])
    for x, y, g in batches:
        for k in sorted(set(g.tolist())):
            m.zero_grad(); F.cross_entropy(m(x[g == k]), y[g == k]).backward()
            for n, l in layers.items():
                gr = l.weight.grad if l.weight.grad is not None else torch.zeros_like(l.weight)
                v = gr.abs() if metric == 'gradient' else (gr*l.weight).square()
                out.setdefault(n, [torch.zeros_like(v) for _ in range(G)])[k] += v.detach()
    return {n: torch.stack(v) for n, v in out.items()}

@pytest.mark.parametrize('arch', list(ARCHS))
@pytest.mark.parametrize('metric', ['gradient', 'grape'])
def test_fast_equals_per_group_backward(arch, metric):
    torch.manual_seed(0)
    model = ARCHS[arch]().eval()
    batches = [(torch.randn(7, 3, 32, 32), torch.randint(0, 5, (7,)), torch.tensor([0, 2, 0, 2, 2, 0, 0])),
               (torch.randn(3, 3, 32, 32), torch.randint(0, 5, (3,)), torch.tensor([1, 1, 0]))]
    fast, slow = group_importance(model, batches, metric), slow_importance(model, batches, metric, 3)
    fc.test_eq(list(fast), list(slow))
    for n in fast: fc.test_close(fast[n], slow[n], eps=1e-4*max(slow[n].abs().max().item(), 1e-12))

@pytest.mark.parametrize('metric', ['grape', 'hawq'])
def test_fresh_tinyvit_several_batches(metric):
    "TinyViT caches its attention biases at the first eval forward; a cache holding a graph breaks per-group backwards of later batches"
    torch.manual_seed(0)
    model = ARCHS['tinyvit_mini']().eval()
    b = [(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), torch.tensor([0, 1]))]*2
    imp = group_importance(model, b, metric, hawq_samples=1)
    fc.test_eq(imp['head.fc.weight'].shape, (2, 5, 64))
    assert imp['head.fc.weight'].sum() > 0

def test_bad_batches_are_refused():
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x, y = torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
    fc.test_fail(lambda: group_importance(m, []), contains="batches yielded nothing")
    fc.test_fail(lambda: group_importance(m, [(x, y, torch.tensor([0, 1, 2, 3]))], n_groups=3), contains="batch 0: group indices must be integers in [0, 3), got [0, 1, 2, 3]")
    fc.test_fail(lambda: group_importance(m, [(x, y, torch.tensor([0, 1]))]), contains="batch 0: x, y, g have 4, 4, 2 rows")
    fc.test_fail(lambda: group_importance(m, [(x, y)]), contains="batch 0: expected (x, y, g)")
    fc.test_fail(lambda: group_importance(torch.nn.ReLU(), [(x, y, y)]), contains="has no Conv2d or Linear weight")
    fc.test_fail(lambda: reduce_importance({'w': torch.ones(3, 2)}, 'subtractive', unprivileged=0), contains="exactly 2 groups, found 3 (0, 1, 2)")

def test_stage_blind_map_uses_population_draw(tmp_path):
    "run_importance's group-blind map is the map of a seeded random draw (the split's shares), not of the balanced batches"
    from fairquant.finetune import example_run, load_checkpoint
    from fairquant.datasets import open_stage_dataset, build_transform
    from fairquant.importance import run_importance, load_importance, calibration_rows
    from fairquant.core import load_json
    run = example_run(tmp_path/'run')
    index = run_importance(run, ['grape'], 'train', n_batches=3, batch_size=32, seed=5, tags=['vit_mini'], progress=False)
    e, out = index['tags']['vit_mini'], run/'20_importance'
    ck, ds = load_checkpoint(run/e['checkpoint']), open_stage_dataset(run)
    rows, items = ds.split('train'), ds.torch_dataset('train', build_transform(ck.data_config))
    def batches(balance):
        pos = calibration_rows(rows, 96, balance, 5, 32)
        xs = [items[int(j)] for j in pos]
        return [(torch.stack([x for x, _, _ in xs[i:i + 32]]), torch.tensor([y for _, y, _ in xs[i:i + 32]]),
                 torch.zeros(len(xs[i:i + 32]), dtype=torch.long)) for i in range(0, len(xs), 32)], rows.iloc[pos]
    (rand, used), (bal, _) = batches(False), batches(True)
    maps, meta = load_importance(out/e['blind']['grape'])
    want, old = group_importance(ck.model, rand, 'grape', 1), group_importance(ck.model, bal, 'grape', 1)
    for n in maps: fc.test_close(maps[n], want[n], eps=1e-5*max(want[n].abs().max().item(), 1e-12))
    assert any(not torch.allclose(maps[n], old[n], rtol=1e-3) for n in maps), "the blind map equals the balanced batches' map"
    counts = {g: int((used.group == k).sum()) for k, g in enumerate(ds.groups)}
    fc.test_eq((meta['balance'], meta['images_per_group'], meta['n_images'], meta['groups']), (False, counts, 96, ['all']))
    assert counts['dark'] < 30   # about 12 % of 96, not the balanced 48
    draws = load_json(out/e['summary'])['draws']
    fc.test_eq((draws['blind']['images_per_group'], draws['group_aware']['images_per_group']), (counts, {'light': 48, 'dark': 48}))
    fc.test_eq(draws['blind']['files'], [e['blind']['grape']])

def _raw_hawq(batch_fn, model, batches, probes, *args):
    "d̂ of every group (the metric left out) from one HAWQ batch function, probes given"
    layers = imp_mod.target_layers(model); maps = imp_mod._Maps(layers, 3); maps.reserve(3)
    with imp_mod.untouched(model), torch.enable_grad():
        for (x, y, g), pr in zip(batches, probes): batch_fn(layers, model, lambda d, w: d, x, y, g, maps, pr, *args)
    return maps.result()

@pytest.mark.parametrize('arch', list(ARCHS))
def test_hawq_one_pass_equals_per_group(arch):
    """One forward, backward and double backward per probe for all groups == one forward and double backward per group and
    probe, same probes; in passes of 3 images (groups cut across passes) too"""
    torch.manual_seed(0)
    model = ARCHS[arch]().eval()
    batches = [(torch.randn(7, 3, 32, 32), torch.randint(0, 5, (7,)), torch.tensor([0, 2, 0, 2, 2, 0, 0])),
               (torch.randn(3, 3, 32, 32), torch.randint(0, 5, (3,)), torch.tensor([1, 1, 0]))]
    ws = [m.weight for m in imp_mod.target_layers(model).values()]
    gen = torch.Generator().manual_seed(0); probes = [imp_mod._probes(ws, 2, gen) for _ in batches]
    slow = _raw_hawq(imp_mod._hawq_per_group, model, batches, probes)
    for chunk in (32, 3):
        fast = _raw_hawq(imp_mod._hawq_batch, model, batches, probes, None, chunk)
        fc.test_eq(list(fast), list(slow))
        for n in fast: fc.test_close(fast[n], slow[n], eps=1e-4*max(slow[n].abs().max().item(), 1e-12))

def test_hawq_seeded_whatever_the_layout_cache():
    "The layout probe draws from its own generator: a call that reuses the cached verdict gives the same hawq maps"
    torch.manual_seed(0)
    model = ARCHS['deit_mini']().eval()
    b = [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 0, 1]))]
    imp_mod._LAYOUTS.pop(model, None)
    first = group_importance(model, b, 'hawq', hawq_samples=2, seed=4)
    assert model in imp_mod._LAYOUTS
    again = group_importance(model, b, 'hawq', hawq_samples=2, seed=4)
    for n in first: fc.test_eq(first[n], again[n])

def _stage_maps(run, idx):
    from fairquant.importance import load_importance
    return {(t, m, kind): load_importance(run/'20_importance'/e[kind][m])[0] for t, e in idx['tags'].items() for m in e['maps'] for kind in ('maps', 'blind')}

def test_stage_device_cpu_and_auto(tmp_path):
    "run_importance(device='cpu') and device='auto' (the CPU where no GPU is usable) give the same maps; the device is recorded everywhere"
    from fairquant.finetune import example_run
    from fairquant.importance import run_importance
    from fairquant.core import load_json
    runs, idx = {}, {}
    for d, w in (('cpu', 0), ('auto', 1)):
        runs[d] = example_run(tmp_path/d)
        idx[d] = run_importance(runs[d], ['grape', 'hawq'], 'train', n_batches=1, batch_size=16, tags=['resnet18'], progress=False, device=d, workers=w)
    want = 'cuda' if torch.cuda.is_available() else 'cpu'
    fc.test_eq((idx['cpu']['tags']['resnet18']['device'], idx['auto']['tags']['resnet18']['device']), ('cpu', want))
    fc.test_eq(load_json(runs['auto']/'20_importance'/idx['auto']['tags']['resnet18']['summary'])['device'], want)
    a, b = _stage_maps(runs['cpu'], idx['cpu']), _stage_maps(runs['auto'], idx['auto'])
    fc.test_eq(list(a), list(b))
    for k in a:
        for n in a[k]:
            assert b[k][n].device.type == 'cpu'
            if want == 'cpu': fc.test_eq(b[k][n], a[k][n])   # bit for bit
            else: fc.test_close(b[k][n], a[k][n], eps=1e-3*max(a[k][n].abs().max().item(), 1e-12))   # float32 on the GPU, another summation order

@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.parametrize('arch', ['deit_mini', 'convnext_atto'])
@pytest.mark.parametrize('metric', ['grape', 'hawq'])
def test_gpu_maps_equal_cpu_maps(arch, metric):
    "On a GPU: the same maps as on the CPU within float32 rounding (TF32 off), hawq with the same probes (drawn on the CPU), the model handed back"
    torch.manual_seed(0)
    model = ARCHS[arch]().eval()
    b = [(torch.randn(7, 3, 32, 32), torch.randint(0, 5, (7,)), torch.tensor([0, 2, 0, 2, 2, 0, 0]))]
    cpu = group_importance(model, b, metric, hawq_samples=2, seed=1)
    gpu = group_importance(model.cuda(), b, metric, hawq_samples=2, seed=1)
    for n in cpu: fc.test_close(gpu[n].cpu(), cpu[n], eps=1e-3*max(cpu[n].abs().max().item(), 1e-12))

"""The timing harness every benchmark shares: a method and its baseline run interleaved, round by round, and each
result is reported as its median with the spread beside it (`ratio`, `ratio_min`, `ratio_max`).

On a shared 2-core machine one run cannot tell a regression from noise; a ratio taken within one round (both sides
timed back to back) cancels most of the machine's drift, and the min/max over the rounds say how far a single run
could have landed. Targets are judged on the median.

No function ever runs twice in a row across a round boundary: every timed call follows calls of the other functions,
so both sides of a ratio are measured in the same condition (caches filled by the others). With three or more
functions the order is rotated by one each round (over n rounds every function takes every position once); with two
it stays A B | A B (each always follows the other). The order used to be reversed every other round, which ran the
function at each end twice back to back, the second time on warm caches: an A/A pair in `mixed_onnx.py` (two
sessions of one FP32 file, one at an end of the order, the other inside) read 0.896 and 0.902 instead of 1 in two
runs, and ResNet-18's static INT8 speed-up split into two modes by which side happened to be warm (per-round ratios
2.34–2.48 and 2.84–3.36 in one run), so its median of 7 rounds moved between 2.3 and 3.6 with the rounds' parity.
A benchmark that wants the warm, steady-state time of each side (a deployed model running call after call) asks for
it on both sides alike: `repeat=2` times the best of two back-to-back calls."""
import statistics, time

ROUNDS = 5   # the minimum: at least 5 interleaved rounds per pair


def round_order(names:list, i:int)->list:
    "The order of round `i` (warm-up rounds have negative i): `names` rotated left by i from three names on; two keep their order"
    if len(names) < 3: return list(names)   # A B | B A would run each twice in a row: A B | A B never does
    j = i % len(names)
    return list(names[j:]) + list(names[:j])


def interleaved(fns:dict, rounds:int=ROUNDS, warmup:int=1, repeat:int=1)->dict:
    """{name: [seconds per round]}: every function once per round (the best of `repeat` calls), the order rotated
    by one each round (`round_order`); `warmup` untimed rounds first"""
    if rounds < 1: raise ValueError(f"rounds={rounds}: expected at least 1")
    names = list(fns); out = {k: [] for k in names}
    for i in range(warmup + rounds):
        for k in round_order(names, i - warmup):
            best = float('inf')
            for _ in range(repeat):
                t = time.perf_counter(); fns[k](); best = min(best, time.perf_counter() - t)
            if i >= warmup: out[k].append(best)
    return out


def round_ratios(times:dict, num:str, den:str)->list:
    "Per-round ratio times[num][i] / times[den][i] (both timed in the same round)"
    a, b = times[num], times[den]
    if len(a) != len(b) or not a: raise ValueError(f"round_ratios: {num} has {len(a)} rounds, {den} {len(b)}")
    return [x/y for x, y in zip(a, b)]


def spread(key:str, values, digits:int=4)->dict:
    "{key: median, key_min: min, key_max: max} of `values`, rounded"
    v = [float(x) for x in values]
    if not v: raise ValueError(f"spread({key!r}): no values")
    return {key: round(statistics.median(v), digits), f'{key}_min': round(min(v), digits), f'{key}_max': round(max(v), digits)}

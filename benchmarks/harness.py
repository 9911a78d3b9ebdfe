"""The timing harness every benchmark shares: a method and its baseline run interleaved, round by round, and each
result is reported as its median with the spread beside it (`ratio`, `ratio_min`, `ratio_max`).

On a shared 2-core machine one run cannot tell a regression from noise; a ratio taken within one round (both sides
timed back to back, the order alternating between rounds) cancels most of the machine's drift, and the min/max over
the rounds say how far a single run could have landed. Targets are judged on the median."""
import statistics, time

ROUNDS = 5   # the minimum: at least 5 interleaved rounds per pair


def interleaved(fns:dict, rounds:int=ROUNDS, warmup:int=1, repeat:int=1)->dict:
    """{name: [seconds per round]}: every function once per round (the best of `repeat` calls), the order of the
    functions reversed every other round; `warmup` untimed rounds first"""
    if rounds < 1: raise ValueError(f"rounds={rounds}: expected at least 1")
    names = list(fns); out = {k: [] for k in names}
    for i in range(warmup + rounds):
        for k in (names if i % 2 == 0 else names[::-1]):
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

#!/usr/bin/env python3
"""Monte Carlo of callvisor's bounce-and-retry placement behind a random load balancer.

Reproduces the numbers in the README's "Scaling out" section:
  - the f^(tries) table (closed form);
  - the fill scenario (21 calls, 3 x 10 slots, 9 tries): how often a call that fits is refused,
    when only the stream's replica decides (callvisor) versus when the webhook's replica must
    also have room (two independent draws per try);
  - a rolling deploy of 3 replicas with 24 live calls, by slots per replica.
Model: calls arrive one after another; every try sends the stream to a uniformly random replica
in the balancer; a full or draining replica refuses it.
"""

import random

TRIES = 9  # MAX_REDIRECTS = 8


def place(load, limit, tries, two_draws=False):
    """Returns (replica or None, tries used)."""
    names = list(load)
    for used in range(1, tries + 1):
        if two_draws:
            webhook = random.choice(names)
            if load[webhook] >= limit:
                continue
        stream = random.choice(names)
        if load[stream] < limit:
            load[stream] += 1
            return stream, used
    return None, tries


def fill(two_draws, trials=20000, calls=21, replicas=3, limit=10):
    refused = 0
    for _ in range(trials):
        load = {f"r{i}": 0 for i in range(replicas)}
        if not all(place(load, limit, TRIES, two_draws)[0] for _ in range(calls)):
            refused += 1
    return refused / trials


def rolling(limit, trials=20000, calls=24):
    """Replace r1..r3 by n1..n3 one at a time; the old one leaves the balancer, its calls move."""
    refused = 0
    for _ in range(trials):
        where, used, load = {}, {}, {"r1": 0, "r2": 0, "r3": 0}
        for c in range(calls):
            where[c], used[c] = place(load, limit, TRIES)
        ok = all(where.values())
        for i, old in enumerate(["r1", "r2", "r3"]):
            load[f"n{i + 1}"] = 0
            del load[old]
            for c in [c for c, r in where.items() if r == old]:
                # A hand-off spends one of the call's tries, like a bounce.
                where[c], spent = place(load, limit, TRIES - used[c])
                used[c] += spent
                ok = ok and where[c] is not None
        refused += not ok
    return refused / trials


if __name__ == "__main__":
    print("P(a call that fits is refused) ~ f^(MAX_REDIRECTS+1)")
    for f, label in ((1 / 3, "1/3"), (1 / 2, "1/2"), (2 / 3, "2/3"), (3 / 4, "3/4"), (0.9, "9/10")):
        print(f"  f={label:>4}: " + "  ".join(f"N={n}: {100 * f ** (n + 1):.2g}%" for n in (3, 5, 8, 10)))
    print(f"fill, 21 calls on 3x10: refused in {100 * fill(False):.3f}% of runs (stream decides), "
          f"{100 * fill(True):.3f}% (webhook and stream must both have room)")
    for limit in (10, 12, 15, 20):
        print(f"rolling deploy, 24 calls on 3x{limit}: a call refused in {100 * rolling(limit):.2f}% of deploys")

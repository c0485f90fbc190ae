"""The anonymizer's audit cache (umbra.services.anonymizer.audit.Cache): a hit does not compute again, and the cache
keeps its most recently used entries only."""

from __future__ import annotations

import threading

from umbra.services.anonymizer.audit import Cache


def test_a_hit_does_not_compute_again_and_the_least_recently_used_goes_first():
    cache, computed = Cache(2), []

    def compute(value):
        def run():
            computed.append(value)
            return value
        return run

    assert cache.get("a", compute(1)) == 1 and cache.get("b", compute(2)) == 2
    assert cache.get("a", compute(99)) == 1  # a hit: not computed again, and now the most recent
    assert cache.get("c", compute(3)) == 3  # evicts b, the least recently used
    assert cache.get("a", compute(99)) == 1
    assert cache.get("b", compute(4)) == 4  # b was evicted: computed again
    assert computed == [1, 2, 3, 4]


def test_threads_share_one_cache():
    cache = Cache(4)
    results = []
    threads = [threading.Thread(target=lambda i=i: results.append(cache.get(i % 3, lambda i=i: i % 3)))
               for i in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(set(results)) == [0, 1, 2] and len(results) == 30

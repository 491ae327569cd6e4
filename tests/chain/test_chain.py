"""The tier chain without a kernel: memory tiers behind fault-injecting wrappers, on
trio's autojump clock (a minute of breaker time passes in microseconds)."""

from __future__ import annotations

import errno
import os

import pytest
import trio

from stormount.chain.health import RESERVED
from stormount.chain.repair import STAMP
from stormount.config import ChainConfig
from stormount.errors import BackendError, Changed, NotFound, Throttled, Transient
from tests.helpers.chain import settled
from tests.helpers.faults import OPERATIONS

pytestmark = pytest.mark.timeout(30)
DOWN = Transient("connection refused")


def outage(tiers, i: int, what: object = DOWN) -> None:
    """Every request to tier `i` fails (or hangs)."""
    for op in OPERATIONS:
        tiers.faulty[i].fail(op, what)


def local_file(tmp_path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


async def started(make_tiers, nursery, n=2, mirrors=(), cfg=None, **options):
    tiers = make_tiers(n, mirrors, **options)
    chain = tiers.make(cfg)
    await chain.check()
    nursery.start_soon(chain.run)
    return tiers, chain


async def test_writes_go_to_the_primary_while_it_is_healthy(
        make_tiers, nursery, tmp_path, autojump_clock):
    tiers, chain = await started(make_tiers, nursery)
    await chain.put_file("a.txt", local_file(tmp_path, "a", b"alpha"), {"mode": "644"})
    await chain.put_bytes("d/", b"", {})
    assert tiers.objects(0) == {"a.txt": b"alpha", "d/": b""}
    assert tiers.objects(1) == {}
    assert chain.pending.tasks == {}


async def test_writes_fail_over_at_once_and_are_copied_up_after_the_outage(
        make_tiers, nursery, tmp_path, autojump_clock):
    tiers, chain = await started(make_tiers, nursery)
    outage(tiers, 0)
    for i in range(8):
        start = trio.current_time()
        info = await chain.put_file(f"f{i}", local_file(tmp_path, f"f{i}", b"x%d" % i), {})
        assert trio.current_time() - start < 5
        # the layers above read it back at the version the write returned
        assert await chain.get_range(f"f{i}", 0, 10, info.etag) == b"x%d" % i
    assert tiers.objects(0) == {}
    assert tiers.objects(1) == {f"f{i}": b"x%d" % i for i in range(8)}
    assert chain.health.snapshot()["tiers"][0]["breaker"] == "open"
    with pytest.raises(Transient) as caught:  # no tier holds everything: no partial listing
        await chain.list("")
    assert caught.value.errno == errno.EIO

    tiers.faulty[0].heal()
    start = trio.current_time()
    await settled(chain)
    # a probe finds the primary back within seconds, not after the breaker's minute
    assert trio.current_time() - start < 30
    assert tiers.objects(0) == {f"f{i}": b"x%d" % i for i in range(8)}
    assert tiers.objects(1) == {}  # the spill tier is emptied
    assert chain.health.snapshot()["tiers"][0]["breaker"] == "closed"
    # and the versions the layers above hold still read
    assert await chain.get_range("f3", 0, 10, info_etag := (await chain.head("f3")).etag) == b"x3"
    assert info_etag


async def test_listings_show_spilled_and_hide_deleted_keys(
        make_tiers, nursery, tmp_path, autojump_clock):
    tiers, chain = await started(make_tiers, nursery, n=3, mirrors=(2,))
    for name in ("a", "b", "d/x"):
        await chain.put_file(name, local_file(tmp_path, "f", name.encode()), {})
    await settled(chain)  # the mirror has them
    outage(tiers, 0)
    await chain.put_file("c", local_file(tmp_path, "c", b"new"), {})
    await chain.put_file("e/y", local_file(tmp_path, "y", b"new"), {})
    await chain.delete("b")
    page = await chain.list("")  # from the mirror, with the queue laid over it
    assert [o.key for o in page.objects] == ["a", "c"]
    assert page.prefixes == ["d/", "e/"]
    with pytest.raises(NotFound):
        await chain.head("b")
    tiers.faulty[0].heal()
    await settled(chain)
    page = await chain.list("")
    assert [o.key for o in page.objects] == ["a", "c"]
    assert sorted(tiers.objects(0)) == ["a", "c", "d/x", "e/y"]
    assert sorted(tiers.objects(2)) == ["a", "c", "d/x", "e/y"]  # the mirror follows


async def test_paged_listings_merge_spilled_keys_once(
        make_tiers, nursery, tmp_path, autojump_clock):
    # only writes fail, and not enough to open the breaker: listings still work
    tiers, chain = await started(make_tiers, nursery, breaker_failures=100)
    for i in range(0, 20, 2):
        tiers.put(0, f"k{i:02d}", b"old")
    tiers.faulty[0].fail("put_file", Transient("down for writes"))
    for i in range(1, 20, 2):
        await chain.put_file(f"k{i:02d}", local_file(tmp_path, "f", b"new"), {})
    keys, token = [], None
    while True:
        page = await chain.list("", token=token, limit=3)
        keys += [o.key for o in page.objects]
        token = page.token
        if token is None:
            break
    assert keys == [f"k{i:02d}" for i in range(20)]


async def test_a_hanging_primary_is_given_up_within_five_seconds(
        make_tiers, nursery, tmp_path, autojump_clock):
    tiers, chain = await started(make_tiers, nursery)
    outage(tiers, 0, "hang")  # accepts requests, never answers
    start = trio.current_time()
    async with trio.open_nursery() as writers:
        for i in range(3):
            writers.start_soon(chain.put_file, f"h{i}", local_file(tmp_path, f"h{i}", b"h"), {})
    assert trio.current_time() - start < 5
    assert sorted(tiers.objects(1)) == ["h0", "h1", "h2"]
    start = trio.current_time()
    await chain.put_file("later", local_file(tmp_path, "l", b"l"), {})
    assert trio.current_time() - start < 1  # the breaker is open: no more waiting
    tiers.faulty[0].heal()
    await settled(chain)
    assert sorted(tiers.objects(0)) == ["h0", "h1", "h2", "later"]


async def test_timeouts_per_kind_of_request(make_tiers, nursery, autojump_clock):
    # the stall watch is slowed down here so the request timeout is what ends the wait
    tiers, chain = await started(make_tiers, nursery, cfg=ChainConfig(retries=1),
                                 stall_timeout=1000, list_timeout=30, delete_timeout=30)
    tiers.faulty[0].fail("head", "hang")
    start = trio.current_time()
    with pytest.raises(Transient, match="timed out after 30 s"):
        await chain.head("x")
    assert trio.current_time() - start == pytest.approx(30, abs=0.01)
    assert chain.health.snapshot()["tiers"][0]["consecutive_failures"] >= 1


async def test_reads_are_retried_and_throttling_never_reads_as_missing(
        make_tiers, nursery, tmp_path, autojump_clock):
    tiers, chain = await started(make_tiers, nursery, cfg=ChainConfig(retries=4))
    await chain.put_file("t", local_file(tmp_path, "t", b"data"), {})
    answers = iter([Throttled("SlowDown"), Throttled("SlowDown"), None])
    tiers.faulty[0].fail("get_range", lambda key: next(answers))
    assert await chain.get_range("t", 0, 4) == b"data"  # retried with backoff
    tiers.faulty[0].fail("get_range", Throttled("SlowDown"))
    tiers.faulty[0].fail("head", Throttled("SlowDown"))
    start = trio.current_time()
    with pytest.raises(Throttled) as caught:
        await chain.get_range("t", 0, 4)
    assert caught.value.errno == errno.EAGAIN
    assert 1 + 2 + 4 <= trio.current_time() - start < 20  # 1, 2, 4 s backoff (+ jitter)
    # throttling says the tier is alive: its breaker stays closed
    assert chain.health.snapshot()["tiers"][0]["breaker"] == "closed"


async def test_all_tiers_down_fails_fast_with_eio(make_tiers, nursery, tmp_path, autojump_clock):
    tiers, chain = await started(make_tiers, nursery)
    await chain.put_file("a", local_file(tmp_path, "a", b"a"), {})
    outage(tiers, 0)
    outage(tiers, 1)
    for _ in range(5):  # opens both breakers
        with pytest.raises(Transient):
            await chain.put_file("b", local_file(tmp_path, "b", b"b"), {})
    start = trio.current_time()
    with pytest.raises(Transient) as caught:
        await chain.get_range("a", 0, 1)
    assert caught.value.errno == errno.EIO
    assert trio.current_time() - start < 0.1
    with pytest.raises(Transient):
        await chain.put_file("b", local_file(tmp_path, "b", b"b"), {})
    assert trio.current_time() - start < 0.1


async def test_uploads_queue_behind_the_tier_limit(make_tiers, nursery, tmp_path, autojump_clock):
    tiers, chain = await started(make_tiers, nursery, uploads=2, stall_timeout=1000)
    running = peak = 0
    inner = tiers.faulty[0].inner

    async def slow_put(*args, **kwargs):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await trio.sleep(1)
        running -= 1
        return await inner.put_file(*args, **kwargs)

    tiers.faulty[0].put_file = slow_put
    start = trio.current_time()
    async with trio.open_nursery() as writers:
        for i in range(6):
            writers.start_soon(chain.put_file, f"q{i}", local_file(tmp_path, f"q{i}", b"q"), {})
    assert peak == 2  # the others waited their turn, and none failed over
    assert trio.current_time() - start == pytest.approx(3, abs=0.01)
    assert sorted(tiers.objects(0)) == [f"q{i}" for i in range(6)]


async def test_probes_run_on_schedule_and_stay_hidden(make_tiers, nursery, autojump_clock):
    tiers, chain = await started(make_tiers, nursery, probe_interval=300,
                                 probe_interval_down=5)
    status = chain.health.snapshot()["tiers"][0]
    assert status["probe_at"] is None
    await trio.sleep(301)
    status = chain.health.snapshot()["tiers"][0]
    assert status["probe_ok"] is True
    outage(tiers, 0)
    await trio.sleep(300)
    assert chain.health.snapshot()["tiers"][0]["breaker"] == "open"  # the probe failed
    tiers.faulty[0].heal()
    await trio.sleep(5.1)  # probes come every 5 s while it is down
    assert chain.health.snapshot()["tiers"][0]["breaker"] == "closed"
    assert (await chain.list("")).prefixes == []  # .stormount/ is not listed
    with pytest.raises(NotFound):
        await chain.head(RESERVED + "probe/x")
    with pytest.raises(BackendError) as caught:
        await chain.put_bytes(RESERVED + "mine", b"", {})
    assert caught.value.errno == errno.EACCES


async def test_repair_resumes_after_a_crash(make_tiers, nursery, tmp_path, autojump_clock):
    tiers = make_tiers(2)
    chain = tiers.make()
    await chain.check()
    outage(tiers, 0)
    for i in range(3):
        await chain.put_file(f"r{i}", local_file(tmp_path, f"r{i}", b"r%d" % i), {})
    chain.pending.journal.close()  # the daemon dies before any repair
    tiers.faulty[0].heal()
    again = tiers.make()
    await again.check()
    nursery.start_soon(again.run)
    await settled(again)
    assert tiers.objects(0) == {f"r{i}": b"r%d" % i for i in range(3)}
    assert tiers.objects(1) == {}


async def test_repair_cut_short_by_a_crash_is_done_again(
        make_tiers, tmp_path, autojump_clock):
    tiers = make_tiers(2)
    chain = tiers.make()
    await chain.check()
    outage(tiers, 0)
    await chain.put_file("big", local_file(tmp_path, "big", os.urandom(20 << 20)), {})
    tiers.faulty[0].heal()
    tiers.faulty[0].fail("put_file", "hang")  # the copy up never finishes...
    with trio.move_on_after(30):
        await chain.run()  # ...and the daemon dies in the middle of it
    chain.pending.journal.close()
    tiers.faulty[0].heal()
    again = tiers.make()
    await again.check()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(again.run)
        await settled(again)
        nursery.cancel_scope.cancel()
    assert tiers.objects(0)["big"] == tiers_bytes(tmp_path, "big")
    assert tiers.objects(1) == {}


def tiers_bytes(tmp_path, name: str) -> bytes:
    return (tmp_path / name).read_bytes()


async def test_a_primary_changed_during_the_outage_keeps_its_version(
        make_tiers, nursery, tmp_path, autojump_clock):
    tiers, chain = await started(make_tiers, nursery)
    base = await chain.put_file("doc", local_file(tmp_path, "v1", b"v1"), {})
    outage(tiers, 0)
    await chain.put_file("doc", local_file(tmp_path, "mine", b"mine"), {}, if_match=base.etag)
    tiers.put(0, "doc", b"theirs")  # another client wrote it meanwhile
    tiers.faulty[0].heal()
    await settled(chain)
    held = tiers.objects(0)
    assert held["doc"] == b"theirs"
    conflicts = [k for k in held if k.startswith("doc.conflict-testhost-")]
    assert len(conflicts) == 1 and held[conflicts[0]] == b"mine"


async def test_a_conditional_write_after_a_spill_judges_the_spilled_version(
        make_tiers, nursery, tmp_path, autojump_clock):
    tiers, chain = await started(make_tiers, nursery)
    base = await chain.put_file("doc", local_file(tmp_path, "v1", b"v1"), {})
    outage(tiers, 0)
    spilled = await chain.put_file("doc", local_file(tmp_path, "v2", b"v2"), {},
                                   if_match=base.etag)
    with pytest.raises(Changed):  # stale: based on the version the spill replaced
        await chain.put_file("doc", local_file(tmp_path, "v3", b"v3"), {}, if_match=base.etag)
    with pytest.raises(Changed):
        await chain.put_file("doc", local_file(tmp_path, "v3", b"v3"), {}, if_absent=True)
    v3 = await chain.put_file("doc", local_file(tmp_path, "v3", b"v3"), {},
                              if_match=spilled.etag)
    tiers.faulty[0].heal()
    await settled(chain)
    assert tiers.objects(0) == {"doc": b"v3"}
    # the version the layers above know still names it after the copy up
    assert (await chain.head("doc")).etag == v3.etag
    v4 = await chain.put_file("doc", local_file(tmp_path, "v4", b"v4"), {}, if_match=v3.etag)
    assert tiers.objects(0) == {"doc": b"v4"} and v4.etag != v3.etag


async def test_a_mirror_serves_reads_with_the_same_versions(
        make_tiers, nursery, tmp_path, autojump_clock):
    tiers, chain = await started(make_tiers, nursery, mirrors=(1,))
    info = await chain.put_file("m", local_file(tmp_path, "m", b"mirrored"), {"mode": "600"})
    await settled(chain)
    assert tiers.objects(1) == {"m": b"mirrored"}
    outage(tiers, 0)
    head = await chain.head("m")
    assert head.etag == info.etag and head.metadata == {"mode": "600"}  # no stamp shown
    assert await chain.get_range("m", 0, 8, info.etag) == b"mirrored"
    # a fresh chain, with no queue and no memory of versions, reads the mirror too
    fresh = make_tiers(0, mirrors=(1,))
    fresh.faulty, fresh.names = tiers.faulty, tiers.names
    other = fresh.make()
    await other.check()
    assert await other.get_range("m", 0, 8, (await other.head("m")).etag) == b"mirrored"
    fresh.names = []  # the stores belong to `tiers`


async def test_writes_land_on_a_mirror_while_the_primary_is_down(
        make_tiers, nursery, tmp_path, autojump_clock):
    tiers, chain = await started(make_tiers, nursery, mirrors=(1,))
    outage(tiers, 0)
    await chain.put_file("w", local_file(tmp_path, "w", b"during"), {})
    tiers.faulty[0].heal()
    await settled(chain)
    assert tiers.objects(0) == {"w": b"during"}
    assert tiers.objects(1) == {"w": b"during"}  # a mirror keeps its copy
    stored = tiers.objects(0)
    assert stored


async def test_a_copy_carries_the_version_it_stands_for(
        make_tiers, nursery, tmp_path, autojump_clock):
    from stormount.backends.memory import _STORES

    tiers, chain = await started(make_tiers, nursery, mirrors=(1,))
    info = await chain.put_file("s", local_file(tmp_path, "s", b"s"), {})
    await settled(chain)
    _, mirror_info = _STORES[tiers.names[1]]["s"]
    assert mirror_info.metadata[STAMP] == info.etag and mirror_info.etag != info.etag


async def test_a_rename_onto_a_spilled_name_is_not_undone_by_the_repair(
        make_tiers, nursery, tmp_path, autojump_clock):
    tiers = make_tiers(2)
    chain = tiers.make()
    await chain.check()
    outage(tiers, 0)
    await chain.put_file("orig", local_file(tmp_path, "a", b"old, spilled"), {})
    tiers.faulty[0].heal()
    assert await chain.health.probe(chain.tiers[0])  # back, before any repair ran
    await chain.put_file("tmp", local_file(tmp_path, "b", b"new"), {})
    await chain.copy("tmp", "orig")  # an editor's save: rename tmp over orig
    await chain.delete("tmp")
    nursery.start_soon(chain.run)
    await settled(chain)
    assert tiers.objects(0) == {"orig": b"new"}
    assert tiers.objects(1) == {}


async def test_a_failing_primary_is_not_answered_for_by_a_mirror_that_lacks_the_object(
        make_tiers, nursery, autojump_clock):
    tiers, chain = await started(make_tiers, nursery, mirrors=(1,))
    tiers.put(0, "old", b"there before the mirror")
    tiers.faulty[0].fail("head", Throttled("SlowDown"))
    with pytest.raises(Throttled):
        await chain.head("old")
    tiers.faulty[0].fail("head", Transient("timeout"))
    with pytest.raises(Transient) as caught:
        await chain.head("old")
    assert caught.value.errno == errno.EIO  # not ENOENT


async def test_a_repair_queued_again_while_it_runs_runs_again_after(
        make_tiers, nursery, tmp_path, autojump_clock):
    tiers, chain = await started(make_tiers, nursery, mirrors=(1,))
    answers = iter([BackendError("refused once"), 5.0])  # then a slow copy
    tiers.faulty[1].fail("put_file", lambda key: next(answers, None))
    await chain.put_file("k", local_file(tmp_path, "a", b"v1"), {})
    await trio.sleep(0.5)  # the mirror copy failed and is retried later...
    await chain.put_file("k", local_file(tmp_path, "b", b"v2"), {})  # ...while this one runs
    await settled(chain)
    assert tiers.objects(1) == {"k": b"v2"}


async def test_a_queue_owed_to_other_tiers_refuses_to_start(make_tiers, autojump_clock):
    from stormount.errors import StartupError

    tiers = make_tiers(3)
    chain = tiers.make()
    await chain.check()
    outage(tiers, 0)
    await chain.put_bytes("x", b"x", {})  # spilled: the queue owes tier 0 a copy
    chain.pending.journal.close()
    tiers.faulty.pop()  # the next mount leaves a tier out
    with pytest.raises(StartupError, match="still owes work"):
        tiers.make()


async def test_a_directory_tier_is_probed_like_any_other(tmp_path):  # real clock: threads
    from stormount.backends import open_backend
    from stormount.chain import Tier
    from stormount.chain.health import Health
    from stormount.config import parse_tier_url

    (tmp_path / "dir").mkdir()
    cfg = parse_tier_url(f"file://{tmp_path / 'dir'}")
    tier = Tier(0, open_backend(cfg), cfg)
    try:
        assert await Health([tier], dict).probe(tier)
        assert tier.healthy
        assert not any((tmp_path / "dir").iterdir()) or sorted(
            p.name for p in (tmp_path / "dir").iterdir()) == [".stormount"]
    finally:
        await tier.backend.aclose()

"""Uploads judged by their progress, not by a flat timeout or a slow probe (issue 18):
memory tiers behind a wrapper that trickles bytes, on trio's autojump clock."""

from __future__ import annotations

import logging

import pytest
import trio

from stormount.backends.base import Progress
from stormount.errors import BackendError, Transient
from tests.helpers.faults import Trickle

pytestmark = pytest.mark.timeout(30)
MiB = 1 << 20
# short timeouts, so the behaviour under test is what decides: a 40 s upload is far
# longer than the upload timeout and the transfer stall timeout
OPTIONS = {"upload_timeout": 10, "transfer_stall_timeout": 5, "stall_timeout": 1.5,
           "probe_timeout": 2.5, "complete_timeout": 120}


async def started(make_tiers, nursery, **options):
    tiers = make_tiers(2, **{**OPTIONS, **options})
    chain = tiers.make()
    await chain.check()
    nursery.start_soon(chain.run)
    return tiers, chain


def local_file(tmp_path, data: bytes) -> str:
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    return str(path)


async def test_a_slow_upload_that_keeps_moving_is_never_cut_short(
        make_tiers, nursery, tmp_path, autojump_clock):
    tiers, chain = await started(make_tiers, nursery)
    # 20 steps, 2 s apart: 40 s in all, and every quick check of the busy store is late
    tiers.faulty[0].fail("put_file", Trickle(steps=20, every=2.0))
    tiers.faulty[0].fail("head", 5.0)
    progress = Progress()
    began = trio.current_time()
    info = await chain.put_file("big.bin", local_file(tmp_path, b"x" * 100), {},
                                progress=progress)
    assert trio.current_time() - began >= 40
    assert info.size == 100 and tiers.objects(0) == {"big.bin": b"x" * 100}
    assert tiers.objects(1) == {}  # no failover
    primary = chain.tiers[0]
    assert primary.up and primary.failures == 0 and primary.breaker.opened == 0
    assert progress.sent == 20 * MiB + 100  # the trickle, then the memory store itself


async def test_an_upload_that_stops_moving_fails_over_after_the_transfer_stall_timeout(
        make_tiers, nursery, tmp_path, autojump_clock):
    tiers, chain = await started(make_tiers, nursery)
    tiers.faulty[0].fail("put_file", Trickle(steps=5, every=2.0, stall=True))
    began = trio.current_time()
    await chain.put_file("big.bin", local_file(tmp_path, b"y" * 10), {})
    # 10 s of progress, then 5 s of none
    assert 15 <= trio.current_time() - began < 17
    assert tiers.objects(0) == {} and tiers.objects(1) == {"big.bin": b"y" * 10}
    assert "upload moved no bytes for 5 s" in str(chain.tiers[0].last_error)


async def test_the_store_assembling_an_upload_has_the_complete_timeout(
        make_tiers, nursery, tmp_path, autojump_clock):
    tiers, chain = await started(make_tiers, nursery)
    # all bytes sent, then 100 s of silence while the store puts the object together
    # (longer than the transfer stall timeout), with its quick checks unanswered
    tiers.faulty[0].fail("put_file", Trickle(steps=3, every=1.0, assemble=100.0))
    tiers.faulty[0].fail("head", 5.0)
    await chain.put_file("big.bin", local_file(tmp_path, b"z" * 10), {})
    assert tiers.objects(0) == {"big.bin": b"z" * 10} and tiers.objects(1) == {}
    assert chain.tiers[0].failures == 0

    tiers.faulty[0].fail("put_file", Trickle(steps=3, every=1.0, assemble=1000.0))
    began = trio.current_time()
    await chain.put_file("late.bin", local_file(tmp_path, b"l"), {})
    assert 120 <= trio.current_time() - began - 3 < 122  # complete_timeout, then failover
    assert tiers.objects(1) == {"late.bin": b"l"}
    assert "did not complete the upload within 120 s" in str(chain.tiers[0].last_error)


async def test_a_slow_probe_does_not_trip_a_tier_whose_uploads_move(
        make_tiers, nursery, tmp_path, autojump_clock):
    tiers, chain = await started(make_tiers, nursery, probe_interval=3)
    primary = chain.tiers[0]
    tiers.faulty[0].fail("put_file", Trickle(steps=10, every=1.0))
    tiers.faulty[0].fail("put_bytes", "hang")  # every probe times out
    await chain.put_file("big.bin", local_file(tmp_path, b"p"), {})
    assert primary.probe_ok is False  # probes did run, and were slow...
    assert primary.up and primary.breaker.opened == 0  # ...but the bytes said otherwise
    # with nothing moving, the same slow probe marks it down
    await trio.sleep(10)  # the next probe, and its timeout
    assert not primary.up


async def test_bytes_no_store_takes_are_no_sign_of_life(make_tiers, nursery, tmp_path,
                                                        autojump_clock):
    """Bytes handed to a connection whose endpoint hangs only fill buffers: the stall
    watch still finds the tier dead within seconds, and the upload fails over."""
    tiers, chain = await started(make_tiers, nursery)
    tiers.faulty[0].fail("put_file", Trickle(steps=100, every=0.2, taken=False))
    tiers.faulty[0].fail("head", "hang")
    began = trio.current_time()
    await chain.put_file("big.bin", local_file(tmp_path, b"d"), {})
    assert trio.current_time() - began < 5  # stall_timeout + probe_timeout
    assert tiers.objects(1) == {"big.bin": b"d"} and not chain.tiers[0].up


async def test_a_copy_still_has_the_upload_timeout(make_tiers, nursery, tmp_path,
                                                    autojump_clock):
    tiers, chain = await started(make_tiers, nursery)
    await chain.put_file("a", local_file(tmp_path, b"a"), {})
    tiers.faulty[0].fail("copy", "hang")
    began = trio.current_time()
    with pytest.raises(Transient, match="upload timed out after 10 s"):
        await chain.copy("a", "b")
    assert trio.current_time() - began >= 10


async def test_the_log_says_when_a_downed_tier_is_probed_and_that_is_when_it_is(
        make_tiers, nursery, autojump_clock, caplog):
    caplog.set_level(logging.INFO, logger="stormount")
    _, chain = await started(make_tiers, nursery)
    primary = chain.tiers[0]
    status = primary.status()
    assert status["probe_at"] is None and status["last_answer_ago"] is not None  # the check
    await trio.sleep(100)  # long after the start (and its probe schedule)
    primary.trip(BackendError("no answer within 2.5 s"))
    down_at = trio.current_time()
    with trio.fail_after(60):
        while not primary.up:
            await trio.sleep(0.1)
    back_after = trio.current_time() - down_at
    assert 5 <= back_after < 6  # probe_interval_down, as the line said; not at once
    lines = [r.getMessage() for r in caplog.records if "tier 0" in r.getMessage()]
    assert "probed every 5 s and used again once a probe succeeds" in lines[0]
    assert lines[-1].startswith("tier 0 (memory://")
    assert "is back: a probe succeeded in 0.0 s, 5." in lines[-1]

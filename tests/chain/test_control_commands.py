"""The control commands without a kernel: a chain of memory tiers behind fault-injecting
wrappers, a Vfs and the FUSE adapter over it, composed as the daemon composes them, on
trio's autojump clock. The socket protocol is tests/unit/test_control_server.py; the
commands through a real mount are tests/fuse/test_control.py."""

from __future__ import annotations

import logging
import math

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from stormount.cache.meta import MetaStore
from stormount.config import CacheConfig, MountConfig, WritebackConfig
from stormount.control.commands import Control
from stormount.control.figures import FirstFailure, Health, TierState, WritebackQueue
from stormount.control.server import RequestError
from stormount.errors import Permanent, Transient
from stormount.fuse.ops import Operations
from stormount.vfs.nodes import ROOT_INO
from tests.helpers.chain import settled
from tests.helpers.faults import OPERATIONS, Trickle
from tests.helpers.vfs import VfsFactory, read, write

pytestmark = pytest.mark.timeout(30)


async def no_progress(reply):
    raise AssertionError(f"progress without being asked: {reply}")


class Composed:
    def __init__(self, tiers, chain, vfs, ops, control):
        self.tiers, self.chain, self.vfs, self.ops, self.control = (
            tiers, chain, vfs, ops, control)

    async def ask(self, command: str, progress=no_progress, **args):
        return await self.control.handle({"command": command, **args}, progress)


@pytest.fixture
async def composed(make_tiers, nursery, tmp_path):
    made = VfsFactory(tmp_path, nursery)

    async def _make(n=2, writeback=None, meta=False):
        tiers = make_tiers(n)
        chain = tiers.make()
        await chain.check()
        nursery.start_soon(chain.run)
        store = MetaStore(str(tmp_path / f"meta{len(made.made)}.sqlite3")) if meta else None
        vfs = made(chain, writeback=writeback, meta=store)
        ops = Operations(vfs, vfs.fuse)

        async def invalidate(path, recursive):
            return len(vfs.invalidate(path, recursive))

        cfg = MountConfig(source="memory://", mountpoint="/mnt/m", tiers=(),
                          cache=CacheConfig(dir=str(tmp_path)))
        return Composed(tiers, chain, vfs, ops, Control(cfg, vfs, ops, chain,
                                                        invalidate=invalidate))

    yield _make
    made.close()


def down(tiers, i):
    for op in OPERATIONS:
        tiers.faulty[i].fail(op, Transient("connection refused"))


async def test_health_is_ok_degraded_then_down(composed, autojump_clock):
    c = await composed()
    health = await c.ask("health")
    assert health["ok"] and health["state"] == "ok" and health["reasons"] == []
    assert [t["state"] for t in health["tiers"]] == ["up", "up"]
    assert [t["role"] for t in health["tiers"]] == ["primary", "spill-over"]
    down(c.tiers, 0)
    assert not await c.chain.health.probe(c.chain.tiers[0])
    health = await c.ask("health")
    assert health["state"] == "degraded"
    assert health["tiers"][0]["state"] == "down" and health["tiers"][0]["breaker"] == "open"
    assert "connection refused" in health["tiers"][0]["last_error"]
    assert health["tiers"][0]["probe_ok"] is False
    assert "tier 0 (memory://" in health["reasons"][0]
    down(c.tiers, 1)
    assert not await c.chain.health.probe(c.chain.tiers[1])
    assert (await c.ask("health"))["state"] == "down"
    for faulty in c.tiers.faulty:
        faulty.heal()
    for tier in c.chain.tiers:
        assert await c.chain.health.probe(tier)
    assert (await c.ask("health"))["state"] == "ok"


async def test_failing_uploads_make_the_mount_degraded(composed, autojump_clock):
    c = await composed(writeback=WritebackConfig(debounce=0, retries=1))
    c.tiers.faulty[0].fail("put_file", Permanent("AccessDenied: no writes here"))
    await write(c.vfs, "f", b"data")
    reply = await c.ask("flush")
    assert reply["ok"] is False and "1 of 1 file(s) not uploaded" in reply["error"]
    assert "AccessDenied" in reply["error"]
    assert [r["path"] for r in reply["remaining"]] == ["f"]
    health = await c.ask("health")
    assert health["state"] == "degraded"
    assert health["writeback"]["failing"] == 1 and "upload(s) failing" in health["reasons"][0]
    queue = await c.ask("queue")
    assert queue["uploads"][0]["state"] == "failing"
    assert "AccessDenied" in queue["uploads"][0]["last_error"]


async def test_the_health_reply_is_its_typed_shape_key_for_key(composed, autojump_clock):
    c = await composed(writeback=WritebackConfig(debounce=0, retries=1))
    c.tiers.faulty[0].fail("put_file", Permanent("AccessDenied: no writes here"))
    await write(c.vfs, "f", b"data")
    await c.ask("flush")
    health = await c.ask("health")
    assert set(health) == {"ok", *Health.__required_keys__}
    assert set(health["writeback"]) == WritebackQueue.__required_keys__
    assert set(health["writeback"]["first_failure"]) == FirstFailure.__required_keys__
    for t in [*health["tiers"], (await c.ask("drain", tier=1))["tier"]]:
        assert set(t) == TierState.__required_keys__


async def test_stats_count_operations_and_reset_to_zero(composed, autojump_clock):
    c = await composed()
    await write(c.vfs, "a.txt", b"x" * 1000)
    await c.vfs.writeback.flush()
    assert await read(c.vfs, "a.txt") == b"x" * 1000
    stats = await c.ask("stats")
    primary = stats["backend"]["tiers"][0]["ops"]
    assert primary["put"]["count"] == 1 and primary["put"]["errors"] == 0
    assert primary["put"]["p50_ms"] is not None
    assert stats["writeback"]["uploaded"] == 1 and stats["writeback"]["bytes"] == 1000
    assert stats["cache"]["metadata"]["hits"] + stats["cache"]["metadata"]["misses"] > 0
    reset = await c.ask("stats", reset=True)
    assert reset["reset"] and reset["writeback"]["uploaded"] == 1
    after = await c.ask("stats")
    assert after["backend"]["tiers"][0]["ops"] == {}
    assert after["writeback"]["uploaded"] == 0 and after["writeback"]["bytes"] == 0
    # the Prometheus totals are not reset
    text = (await c.ask("metrics"))["text"]
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("stormount_writeback_uploaded_total", ())] == 1
    assert samples[("stormount_backend_requests_total", (("op", "put"), ("tier", "0")))] == 1


async def test_retries_are_counted_on_the_tier_that_failed(composed, autojump_clock):
    c = await composed(n=1)
    await write(c.vfs, "f", b"hello")
    await c.vfs.writeback.flush()
    failures = iter([Transient("reset by peer")])
    c.tiers.faulty[0].fail("head", lambda key: next(failures, None))
    await c.chain.head("f")
    ops = (await c.ask("stats"))["backend"]["tiers"][0]["ops"]
    assert ops["head"]["retries"] == 1


async def test_flush_uploads_now_with_progress(composed, autojump_clock):
    c = await composed(writeback=WritebackConfig(debounce=3600))
    d = await c.vfs.mkdir(ROOT_INO, "d", 0o755, 1000, 1000)
    await write(c.vfs, "top", b"0")
    for i in range(1, 4):
        await write(c.vfs, f"f{i}", b"%d" % i, parent=d.ino)
    assert len((await c.ask("queue"))["uploads"]) == 5  # with the directory's marker
    c.tiers.faulty[0].fail("put_file", 2.0)  # each upload takes 2 s
    events = []

    async def progress(reply):
        events.append(reply)

    reply = await c.control.handle(  # only under d/
        {"command": "flush", "path": "/mnt/m/d", "progress": True}, progress)
    assert reply == {"ok": True, "path": "/d", "total": 4, "uploaded": 4, "remaining": []}
    assert events and all(e["event"] == "progress" and e["total"] == 4 for e in events)
    assert [up["path"] for up in (await c.ask("queue"))["uploads"]] == ["top"]
    assert (await c.ask("flush"))["uploaded"] == 1
    assert c.tiers.objects(0) == {"top": b"0", "d/": b"", "d/f1": b"1", "d/f2": b"2",
                                  "d/f3": b"3"}


async def test_flush_gives_up_after_its_timeout(composed, autojump_clock):
    c = await composed(writeback=WritebackConfig(debounce=3600))
    await write(c.vfs, "slow", b"s")
    c.tiers.faulty[0].fail("put_file", "hang")
    reply = await c.ask("flush", timeout=5)
    assert reply["ok"] is False and reply["error"] == "1 of 1 file(s) not uploaded within 5 s"
    with pytest.raises(RequestError, match="positive number"):
        await c.ask("flush", timeout="soon")


async def test_timeouts_that_are_nan_are_refused(composed, autojump_clock):
    # JSON from Python (and `ctl flush --wait nan`) can say NaN; it compares false with
    # every bound. Before (issue 19): flush answered "internal error: ValueError", and
    # unmount passed it to the Stopper, whose drain raised "deadline must not be NaN"
    # in the daemon's nursery: the daemon died and the mount with it
    c = await composed()
    asked = []

    async def unmount(**kwargs):
        asked.append(kwargs)
        return {"unmounted": False, "pending": 0}

    c.control.unmount = unmount
    for command in ("flush", "unmount"):
        for bad in (math.nan, -math.inf, -(10**400), -1, "1", True, None, [1]):
            if command == "flush" and bad is None:
                continue  # null is no timeout, as if none was given
            with pytest.raises(RequestError, match="timeout must be a"):
                await c.ask(command, timeout=bad)
    assert asked == []
    # a number beyond any float, or Infinity, is no limit
    for endless in (10**400, math.inf):
        assert (await c.ask("flush", timeout=endless))["ok"] is True
        await c.ask("unmount", timeout=endless)
    assert [a["timeout"] for a in asked] == [math.inf, math.inf]
    await c.ask("unmount", timeout=0)
    assert asked[-1]["timeout"] == 0.0 and isinstance(asked[-1]["timeout"], float)


async def test_tiers_are_named_by_ascii_digits_only(composed, autojump_clock):
    # before (issue 19): "²" is a digit to str.isdigit but not to int(), and 5000 digits
    # are more than int() converts: both were answered "internal error: ValueError"
    c = await composed()
    for raw in ("²", "⑦", "٣", "\uff11", "9" * 5000, "99999999999999999999", "-1", " 1", "1.0",
                -1, 2, 10**400, 1.0, True, None, ["0"]):
        for command in ("drain", "undrain"):
            with pytest.raises(RequestError, match="no tier"):
                await c.ask(command, tier=raw)
    assert (await c.ask("undrain", tier="0001"))["tier"]["index"] == 1


async def test_flush_refuses_a_progress_that_is_not_a_flag(composed, autojump_clock):
    # before (issue 19): it was read in the nursery of the wait, so its error came as an
    # ExceptionGroup, answered "internal error: ExceptionGroup: ..." (and the files
    # under PATH were handed over for upload first)
    c = await composed(writeback=WritebackConfig(debounce=3600))
    await write(c.vfs, "f", b"data")
    for bad in (None, 1, "yes", []):
        with pytest.raises(RequestError, match="progress must be true or false"):
            await c.control.handle({"command": "flush", "progress": bad}, no_progress)
    assert [up["path"] for up in (await c.ask("queue"))["uploads"]] == ["f"]
    assert (await c.ask("flush"))["uploaded"] == 1


async def test_drain_sends_writes_to_the_next_tier_until_undrained(composed, autojump_clock):
    c = await composed()
    with pytest.raises(RequestError, match="no tier 'nine'"):
        await c.ask("drain", tier="nine")
    reply = await c.ask("drain", tier=0)
    assert reply["changed"] and reply["tier"]["state"] == "drained"
    assert (await c.ask("drain", tier="0"))["changed"] is False
    with pytest.raises(RequestError, match="last tier in service"):
        await c.ask("drain", tier=c.chain.tiers[1].url)
    health = await c.ask("health")
    assert health["state"] == "degraded" and "is drained" in health["reasons"][0]
    await write(c.vfs, "during.txt", b"written while drained")
    await c.vfs.writeback.flush()
    assert c.tiers.objects(0) == {}
    assert c.tiers.objects(1) == {"during.txt": b"written while drained"}
    await trio.testing.wait_all_tasks_blocked()  # the repair worker has looked at it
    repairs = (await c.ask("queue"))["repairs"]
    assert [(r["key"], r["tier"], r["action"]) for r in repairs] == [
        ("during.txt", 0, "copy")]
    assert repairs[0]["state"] == "waiting for tier 0"
    assert await read(c.vfs, "during.txt") == b"written while drained"
    assert (await c.ask("undrain", tier="0"))["tier"]["state"] == "up"
    await settled(c.chain)
    assert c.tiers.objects(0) == {"during.txt": b"written while drained"}
    assert c.tiers.objects(1) == {}
    assert (await c.ask("health"))["state"] == "ok"


async def test_invalidate_takes_paths_inside_the_mount(composed, autojump_clock):
    c = await composed()
    await write(c.vfs, "a.txt", b"1")
    for raw, path in (("a.txt", "/a.txt"), ("/mnt/m/a.txt", "/a.txt"), ("./d/../a.txt",
                                                                        "/a.txt"),
                      ("/mnt/m", "/"), ("", "/")):
        reply = await c.ask("invalidate", path=raw)
        assert reply["path"] == path and reply["ok"] is True, raw
    for raw, why in (("/etc/passwd", "not under the mountpoint"), ("../x", "out of the mount"),
                     (None, "no path given"), (3, "must be a string")):
        with pytest.raises(RequestError, match=why):
            await c.ask("invalidate", path=raw)
    with pytest.raises(RequestError, match="recursive must be true or false"):
        await c.ask("invalidate", path="a", recursive="yes")


async def test_a_path_that_is_not_utf8_is_refused(composed, autojump_clock):
    # a name of the store is UTF-8; `ctl invalidate $'\xff'` sends "\udcff" (issue 19:
    # before, it reached meta.sqlite3 and was answered "internal error:
    # UnicodeEncodeError ...", with a traceback in the log)
    c = await composed(meta=True)
    for raw in ("\udcff", "a/\udcff/b", "/mnt/m/\ud800", "\ud800/../\udcff"):
        for command in ("invalidate", "flush", "pin", "unpin"):
            with pytest.raises(RequestError, match="is not valid UTF-8"):
                await c.ask(command, path=raw)
    assert (await c.ask("invalidate", path="é/ü", recursive=True))["path"] == "/é/ü"


async def test_unknown_commands_list_the_known_ones(composed, autojump_clock):
    c = await composed()
    with pytest.raises(RequestError, match=r"unknown command 'nope'.*health, stats"):
        await c.ask("nope")
    with pytest.raises(RequestError, match="no command given"):
        await c.control.handle({}, no_progress)


async def test_a_drained_spill_tier_still_gives_up_what_it_holds(composed, autojump_clock):
    c = await composed()
    c.vfs.releasedir(await c.vfs.opendir(ROOT_INO))  # a listed directory takes new files
    down(c.tiers, 0)
    assert not await c.chain.health.probe(c.chain.tiers[0])
    await write(c.vfs, "spilled.txt", b"spilled while tier 0 was down")
    await c.vfs.writeback.flush()
    assert c.tiers.objects(1) == {"spilled.txt": b"spilled while tier 0 was down"}
    # tier 0 is down, so tier 1 is the last in service: it may not be drained
    with pytest.raises(RequestError, match="last tier in service"):
        await c.ask("drain", tier=1)
    c.tiers.faulty[0].heal()
    assert await c.chain.health.probe(c.chain.tiers[0])
    await c.ask("drain", tier=1)  # retiring it: what it holds is still copied up
    await trio.testing.wait_all_tasks_blocked()
    assert c.tiers.objects(0) == {"spilled.txt": b"spilled while tier 0 was down"}
    # its own copy is removed once it is back in service (a drained tier takes no writes)
    assert [(r["tier"], r["action"], r["state"]) for r in (await c.ask("queue"))["repairs"]
            ] == [(1, "delete", "waiting for tier 1")]
    await c.ask("undrain", tier=1)
    await settled(c.chain)
    assert c.tiers.objects(1) == {}


async def test_timeouts_and_stalls_are_counted_as_such(make_tiers, nursery, autojump_clock):
    tiers = make_tiers(1, list_timeout=1.0, stall_timeout=30.0)
    chain = tiers.make()
    await chain.check()
    tiers.faulty[0].fail("head", "hang")
    with pytest.raises(Transient, match="timed out"):
        await chain.head("k")
    head = chain.tiers[0].metered.ops["head"]
    assert head.errors == {"Timeout": 4} and head.retries == 3
    # a caller that gives up is no failure of the store
    with trio.move_on_after(0.5):
        await chain.head("k")
    assert head.errors == {"Timeout": 4} and head.count == 4


async def test_queue_shows_how_far_an_upload_has_got(composed, autojump_clock, caplog):
    caplog.set_level(logging.INFO, logger="stormount")
    c = await composed(n=1, writeback=WritebackConfig(debounce=0))
    c.tiers.faulty[0].fail("put_file", Transient("connection reset"))
    await write(c.vfs, "big.bin", b"b" * 1000)
    with trio.fail_after(60):
        while (await c.ask("queue"))["uploads"][0]["attempts"] < 1:
            await trio.sleep(0.1)
    # the second attempt goes over a slow link: 100 bytes a second
    c.tiers.faulty[0].fail("put_file", Trickle(steps=10, every=1.0, step=100))
    seen, rates = [], []
    with trio.fail_after(60):
        while uploads := (await c.ask("queue"))["uploads"]:
            up = uploads[0]
            if up["state"] == "uploading":
                seen.append(up)
                rates.append((await c.ask("stats"))["writeback"]["upload_bytes_per_second"])
            await trio.sleep(0.5)
    sent = [up["bytes_sent"] for up in seen]
    assert len(set(sent)) > 5 and sent == sorted(sent) and 0 < sent[-1] <= 1000
    assert {(up["bytes_total"], up["attempt"]) for up in seen} == {(1000, 2)}
    assert all(isinstance(up["rate"], float) for up in seen)
    assert any(up["rate"] > 0 and up["eta"] is not None and up["eta"] >= 0 for up in seen)
    assert any(rate > 0 for rate in rates)  # fed as the bytes go, not once they landed
    done = [r.getMessage() for r in caplog.records if r.getMessage().startswith("uploaded")]
    assert len(done) == 1 and done[0].startswith("uploaded big.bin: 1000 B in ")
    assert done[0].endswith(" after 2 attempts")
    queued = (await c.ask("queue"))["uploads"]
    assert queued == []
